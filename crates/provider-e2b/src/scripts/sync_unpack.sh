# Unpacks one chunk of a sync into the staging directory next to the workdir, so a broken
# upload or extraction never touches the workdir. Chunks unpack side by side. Few processes:
# each costs a millisecond or more on a box, and an edit's sync is mostly this script.
# Inputs (environment): CBX_CHUNK (the upload, removed however this ends, unless CBX_JOINED
# says the commit runs next in the same process and removes it), CBX_CODEC (gzip, zstd or
# none), CBX_STAGE, CBX_WORKDIR; CBX_CLAIM when the staging directory is this sync's claim
# (see sync_watch.py).
set -u
fail() { printf 'crabbox sync: %s\n' "$*" >&2; exit 1; }
[ -n "${CBX_JOINED:-}" ] || trap 'rm -f -- "$CBX_CHUNK"' EXIT
if [ -n "${CBX_CLAIM:-}" ]; then
  # Whoever makes the staging directory applies the sync: made first by the tree's watcher,
  # it is the watcher's (exit 75, nothing removed). Gone again by the time it is looked at
  # (the watcher applied the sync and removed it), it is made anew here: see below.
  mkdir -- "$CBX_STAGE" 2>/dev/null || {
    [ -d "$CBX_STAGE" ] && { trap - EXIT; exit 75; }
    mkdir -- "$CBX_STAGE" 2>/dev/null || {
      [ -d "$CBX_STAGE" ] && { trap - EXIT; exit 75; }
      fail "cannot create staging directory $CBX_STAGE"
    }
  }
  # Made anew after the watcher applied the sync and removed it: the upload went first.
  [ -f "$CBX_CHUNK" ] || { rmdir -- "$CBX_STAGE"; trap - EXIT; exit 75; }
else
  [ -d "$CBX_STAGE" ] || mkdir -p -- "$CBX_STAGE" || fail "cannot create staging directory $CBX_STAGE"
fi
case $CBX_CODEC in
  zstd) zstd -dcq < "$CBX_CHUNK" | tar -xpf - -C "$CBX_STAGE" --no-same-owner ;;
  gzip) tar -xzpf "$CBX_CHUNK" -C "$CBX_STAGE" --no-same-owner ;;
  *) tar -xpf "$CBX_CHUNK" -C "$CBX_STAGE" --no-same-owner ;;
esac || fail "extracting the sync archive failed; $CBX_WORKDIR was left as it was"
