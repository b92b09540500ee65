# Reads the synced tree in one pass, never through a symlink. Output on stdout, NUL-separated:
#   N                 the workdir is missing (nothing follows), else W, then
#   R<len>            when there is a sync record: its length, then exactly <len> bytes of it;
#   D<dir>            for each directory of the record that is a real directory (listed below);
#   E                 then, for every child of the workdir and of those directories, six fields:
#                     type (%y), mode (%m), size, mtime (%T@), ./path, link target;
#   H                 with CBX_CHECKSUM=1, then `<sha256>  ./path` for each regular file listed.
# Inputs (environment): CBX_WORKDIR, CBX_RECORD, CBX_CHECKSUM.
set -u
wd=$CBX_WORKDIR
rec=$CBX_RECORD
if [ -L "$wd" ] || [ ! -d "$wd" ]; then printf 'N\0'; exit 0; fi
cd -- "$wd" || { printf 'N\0'; exit 0; }
printf 'W\0'
have_rec=
if [ -f "$rec" ] && [ ! -L "$rec" ]; then
  have_rec=1
  printf 'R%s\0' "$(wc -c < "$rec")"
  cat -- "$rec"
fi
dirs=$(mktemp) || exit 1
trap 'rm -f -- "$dirs"' EXIT
{
  printf '.\0'
  if [ -n "$have_rec" ]; then grep -z '^d' -- "$rec" | sed -z 's|^d|./|'; fi
} > "$dirs"
while IFS= read -r -d '' d; do
  if [ "$d" != . ] && [ -d "$d" ] && [ ! -L "$d" ]; then printf 'D%s\0' "${d#./}"; fi
done < "$dirs"
printf 'E\0'
list() { xargs -0 -r sh -c 'find "$@" -mindepth 1 -maxdepth 1 '"$1" find < "$dirs" 2>/dev/null; }
list '-printf "%y\0%m\0%s\0%T@\0%p\0%l\0"'
if [ "${CBX_CHECKSUM:-}" = 1 ]; then
  printf 'H\0'
  list '-type f -print0' | xargs -0 -r sha256sum -z -- 2>/dev/null
fi
exit 0
