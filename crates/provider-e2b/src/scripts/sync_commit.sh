# Commits a sync whose chunks are unpacked in $CBX_STAGE: either the staging directory becomes
# the workdir (first sync), or the plan's ops run and the staged files are hard-linked over the
# workdir. The new sync record ($CBX_STAGE.rec, absent when the record on the box lists the
# same paths) goes beside the workdir last.
# Ops ($CBX_STAGE.ops, absent when there are none), NUL-terminated, a letter then a
# workdir-relative path; nothing is done through a symlink:
#   c  remove the path whatever it is      p  make every component of the dir a real dir or absent
#   u  remove the path if it is a real dir x  delete a file crabbox synced before
# Inputs (environment): CBX_WORKDIR, CBX_STAGE, CBX_RECORD, and CBX_OPS_SENT / CBX_REC_SENT when
# the ops / a new record were sent (then their absence is a failure, never "none"). The staging
# directory, ops and record copy are removed however it ends (and CBX_CHUNK, the upload, with
# them when CBX_JOINED says this runs right after its unpack).
set -u
fail() { printf 'crabbox sync: %s\n' "$*" >&2; exit 1; }
ops=$CBX_STAGE.ops
rec=$CBX_STAGE.rec
trap 'rm -rf -- "$CBX_STAGE" "$ops" "$rec" ${CBX_JOINED:+"$CBX_CHUNK"}' EXIT
wd=$CBX_WORKDIR
[ -d "$CBX_STAGE" ] || fail "the staging directory $CBX_STAGE is missing"
[ -z "${CBX_OPS_SENT:-}" ] || [ -f "$ops" ] || fail "the sync's ops $ops are missing; $wd was left as it was"
[ -z "${CBX_REC_SENT:-}" ] || [ -f "$rec" ] || fail "the sync record $rec is missing; $wd was left as it was"
up=${wd%/*}
[ -d "${up:-/}" ] || mkdir -p -- "${up:-/}" || fail "cannot create the parent directory of $wd"
# The new record, if any, in place of the old; the same record is left (a watcher of the tree
# keeps count).
store_record() {
  [ -f "$rec" ] || return 0
  if [ -f "$CBX_RECORD" ] && [ ! -L "$CBX_RECORD" ] && cmp -s -- "$rec" "$CBX_RECORD" 2>/dev/null; then
    return 0
  fi
  mv -f -- "$rec" "$CBX_RECORD" || fail "storing the sync record $CBX_RECORD failed"
}
if [ ! -e "$wd" ] && [ ! -L "$wd" ]; then
  mv -T -- "$CBX_STAGE" "$wd" || fail "moving $CBX_STAGE into place as $wd failed"
  store_record
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
[ -f "$ops" ] && while IFS= read -r -d '' e; do
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
store_record
