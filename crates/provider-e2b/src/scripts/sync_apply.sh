# Applies one sync on the box. The upload ($CBX_ARCHIVE) is the plan's ops ($CBX_OPS_LEN bytes),
# the new sync record ($CBX_RECORD_LEN bytes), then the gzipped tar of the files sent. The tar is
# extracted into a staging directory first, so a broken upload or extraction never touches the
# workdir. Then either the staging directory becomes the workdir (first sync), or the ops run and
# the staged files are hard-linked over the workdir. The record goes beside the workdir last.
# Ops, NUL-terminated, a letter then a workdir-relative path; nothing is done through a symlink:
#   c  remove the path whatever it is      p  make every component of the dir a real dir or absent
#   u  remove the path if it is a real dir x  delete a file crabbox synced before
# Inputs (environment): CBX_ARCHIVE, CBX_OPS_LEN, CBX_RECORD_LEN, CBX_WORKDIR, CBX_STAGE,
# CBX_RECORD. The upload, ops, record copy and staging directory are removed however it ends.
set -u
fail() { printf 'crabbox sync: %s\n' "$*" >&2; exit 1; }
ops=$CBX_STAGE.ops
rec=$CBX_STAGE.rec
cleanup() { rm -rf -- "$CBX_STAGE"; rm -f -- "$CBX_ARCHIVE" "$ops" "$rec"; }
trap cleanup EXIT
wd=$CBX_WORKDIR
mkdir -p -- "$(dirname -- "$wd")" || fail "cannot create the parent directory of $wd"
rm -rf -- "$CBX_STAGE"
mkdir -p -- "$CBX_STAGE" || fail "cannot create staging directory $CBX_STAGE"
head -c "$CBX_OPS_LEN" -- "$CBX_ARCHIVE" > "$ops" || fail "reading the sync plan failed"
tail -c +$((CBX_OPS_LEN + 1)) -- "$CBX_ARCHIVE" | head -c "$CBX_RECORD_LEN" > "$rec" \
  || fail "reading the sync record failed"
tail -c +$((CBX_OPS_LEN + CBX_RECORD_LEN + 1)) -- "$CBX_ARCHIVE" \
  | tar -xzpf - -C "$CBX_STAGE" --no-same-owner \
  || fail "extracting the sync archive failed; $wd was left as it was"
if [ ! -e "$wd" ] && [ ! -L "$wd" ]; then
  mv -T -- "$CBX_STAGE" "$wd" || fail "moving $CBX_STAGE into place as $wd failed"
  mv -f -- "$rec" "$CBX_RECORD" || fail "storing the sync record $CBX_RECORD failed"
  exit 0
fi
if [ -L "$wd" ] || [ ! -d "$wd" ]; then fail "$wd exists and is not a directory"; fi
cd -- "$wd" || fail "cannot enter $wd"
# True when every directory on the way to $1 is a real directory (never a symlink).
parents_real() {
  local rest=$1 at=
  while [ "${rest#*/}" != "$rest" ]; do
    at=${at:+$at/}${rest%%/*}
    rest=${rest#*/}
    if [ -L "$at" ] || [ ! -d "$at" ]; then return 1; fi
  done
  return 0
}
while IFS= read -r -d '' e; do
  p=${e#?}
  case $e in
    c*) if parents_real "$p" && { [ -e "$p" ] || [ -L "$p" ]; }; then
          rm -rf -- "$p" || fail "cannot remove $wd/$p"
        fi ;;
    p*) rest=$p/ at=
        while [ -n "$rest" ]; do
          at=${at:+$at/}${rest%%/*}
          rest=${rest#*/}
          if [ -L "$at" ] || { [ -e "$at" ] && [ ! -d "$at" ]; }; then
            rm -f -- "$at" || fail "cannot remove $wd/$at"
          fi
        done ;;
    u*) if parents_real "$p" && [ -d "$p" ] && [ ! -L "$p" ]; then
          rm -rf -- "$p" || fail "cannot remove $wd/$p"
        fi ;;
    x*) if parents_real "$p" && { [ -L "$p" ] || [ -f "$p" ]; }; then
          rm -f -- "$p" || fail "cannot delete $wd/$p"
          d=${p%/*}
          if [ "$d" != "$p" ]; then rmdir -p --ignore-fail-on-non-empty -- "$d" 2>/dev/null || true; fi
        fi ;;
  esac
done < "$ops"
# Hard-link the extracted files over the workdir: no second decompression, and no new
# disk space is needed, so a half-applied update is as unlikely as it can be.
cp -al --remove-destination -- "$CBX_STAGE/." "$wd/" || fail "updating $wd from the staged files failed"
mv -f -- "$rec" "$CBX_RECORD" || fail "storing the sync record $CBX_RECORD failed"
