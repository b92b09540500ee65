# Applies one sync on the box: extracts the archive into a staging directory, then swaps it in
# (first sync) or deletes the listed files and hard-links the staged ones over the workdir.
# Inputs (environment): CBX_ARCHIVE, CBX_WORKDIR, CBX_STAGE, optional CBX_DELETE (NUL-separated
# list of relative paths). The archive, list and staging directory are removed however it ends.
set -u
fail() { printf 'crabbox sync: %s\n' "$*" >&2; exit 1; }
cleanup() {
  rm -rf -- "$CBX_STAGE"
  rm -f -- "$CBX_ARCHIVE"
  if [ -n "${CBX_DELETE:-}" ]; then rm -f -- "$CBX_DELETE"; fi
}
trap cleanup EXIT
wd=$CBX_WORKDIR
mkdir -p -- "$(dirname -- "$wd")" || fail "cannot create the parent directory of $wd"
rm -rf -- "$CBX_STAGE"
mkdir -p -- "$CBX_STAGE" || fail "cannot create staging directory $CBX_STAGE"
tar -xzpf "$CBX_ARCHIVE" -C "$CBX_STAGE" --no-same-owner \
  || fail "extracting the sync archive failed; $wd was left as it was"
if [ ! -e "$wd" ] && [ ! -L "$wd" ]; then
  mv -T -- "$CBX_STAGE" "$wd" || fail "moving $CBX_STAGE into place as $wd failed"
  exit 0
fi
[ -d "$wd" ] || fail "$wd exists and is not a directory"
cd -- "$wd" || fail "cannot enter $wd"
if [ -n "${CBX_DELETE:-}" ]; then
  while IFS= read -r -d '' f; do
    if [ -L "$f" ] || [ ! -d "$f" ]; then
      rm -f -- "$f" || fail "cannot delete $wd/$f"
    fi
    d=${f%/*}
    if [ "$d" != "$f" ]; then rmdir -p --ignore-fail-on-non-empty -- "$d" 2>/dev/null || true; fi
  done < "$CBX_DELETE"
fi
# Hard-link the extracted files over the workdir: no second decompression, and no new
# disk space is needed, so a half-applied update is as unlikely as it can be.
cp -al --remove-destination -- "$CBX_STAGE/." "$wd/" || fail "updating $wd from the staged files failed"
