# Unpacks one chunk of a sync into the staging directory next to the workdir, so a broken
# upload or extraction never touches the workdir. The first chunk's upload starts with the
# plan's ops ($CBX_OPS_LEN bytes) and the new sync record ($CBX_RECORD_LEN bytes), which go to
# $CBX_STAGE.ops and $CBX_STAGE.rec for the commit. Chunks unpack side by side.
# Inputs (environment): CBX_CHUNK (the upload, removed however this ends), CBX_CODEC (gzip,
# zstd or none), CBX_STAGE, CBX_WORKDIR, and for the first chunk CBX_OPS_LEN, CBX_RECORD_LEN.
set -u
fail() { printf 'crabbox sync: %s\n' "$*" >&2; exit 1; }
trap 'rm -f -- "$CBX_CHUNK"' EXIT
mkdir -p -- "$CBX_STAGE" || fail "cannot create staging directory $CBX_STAGE"
skip=0
if [ -n "${CBX_OPS_LEN:-}" ]; then
  head -c "$CBX_OPS_LEN" -- "$CBX_CHUNK" > "$CBX_STAGE.ops" || fail "reading the sync plan failed"
  tail -c +$((CBX_OPS_LEN + 1)) -- "$CBX_CHUNK" | head -c "$CBX_RECORD_LEN" > "$CBX_STAGE.rec" \
    || fail "reading the sync record failed"
  skip=$((CBX_OPS_LEN + CBX_RECORD_LEN))
fi
case $CBX_CODEC in
  zstd) unpack() { zstd -dcq; } ;;
  gzip) unpack() { gzip -dc; } ;;
  *) unpack() { cat; } ;;
esac
if [ "$skip" -gt 0 ]; then
  tail -c +$((skip + 1)) -- "$CBX_CHUNK" | unpack | tar -xpf - -C "$CBX_STAGE" --no-same-owner
else
  unpack < "$CBX_CHUNK" | tar -xpf - -C "$CBX_STAGE" --no-same-owner
fi || fail "extracting the sync archive failed; $CBX_WORKDIR was left as it was"
