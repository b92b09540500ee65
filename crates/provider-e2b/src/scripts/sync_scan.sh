# Reads the synced tree in one pass, never through a symlink. Output on stdout, NUL-separated:
#   N                 the workdir is missing (nothing follows), else W, then
#   R<len>            when there is a sync record: its length, then exactly <len> bytes of it;
#   E                 then six fields for the workdir, each directory the record names, and every
#                     child of those that are directories: type (%y), mode (%m), size, mtime
#                     (%T@), ./path, link target. A listed directory shows as type d at its own
#                     path (a symlink in its place shows as l and is not entered);
#   H                 with CBX_CHECKSUM=1, then `<sha256>  ./path` for each regular file listed.
# It also removes what syncs killed outright (kill -9) left behind: staging directories of this
# workdir and uploads in /tmp older than CBX_STALE_MINUTES (longer than any sync may take).
# Inputs (environment): CBX_WORKDIR, CBX_RECORD, CBX_CHECKSUM, CBX_STALE_MINUTES.
set -u
wd=$CBX_WORKDIR
rec=$CBX_RECORD
if [ -n "${CBX_STALE_MINUTES:-}" ]; then
  find "$(dirname -- "$wd")" -mindepth 1 -maxdepth 1 -name ".${wd##*/}.crabbox-stage-*" \
    -mmin +"$CBX_STALE_MINUTES" -exec rm -rf -- {} + 2>/dev/null
  find /tmp -mindepth 1 -maxdepth 1 -name 'crabbox-*' -user "$(id -u)" \
    -mmin +"$CBX_STALE_MINUTES" -exec rm -rf -- {} + 2>/dev/null
fi
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
printf 'E\0'
list() { xargs -0 -r sh -c 'find "$@" -maxdepth 1 '"$1" find < "$dirs" 2>/dev/null; }
list '-printf "%y\0%m\0%s\0%T@\0%p\0%l\0"'
if [ "${CBX_CHECKSUM:-}" = 1 ]; then
  printf 'H\0'
  list '-type f -print0' | xargs -0 -r sha256sum -z -- 2>/dev/null
fi
exit 0
