# Unpacks one chunk of a sync into the staging directory next to the workdir, so a broken
# upload or extraction never touches the workdir. Chunks unpack side by side. Few processes:
# each costs a millisecond or more on a box, and an edit's sync is mostly this script.
# Inputs (environment): CBX_CHUNK (the upload, removed however this ends, unless CBX_JOINED
# says the commit runs next in the same process and removes it), CBX_CODEC (gzip, zstd or
# none), CBX_STAGE, CBX_WORKDIR.
set -u
fail() { printf 'crabbox sync: %s\n' "$*" >&2; exit 1; }
[ -n "${CBX_JOINED:-}" ] || trap 'rm -f -- "$CBX_CHUNK"' EXIT
[ -d "$CBX_STAGE" ] || mkdir -p -- "$CBX_STAGE" || fail "cannot create staging directory $CBX_STAGE"
case $CBX_CODEC in
  zstd) zstd -dcq < "$CBX_CHUNK" | tar -xpf - -C "$CBX_STAGE" --no-same-owner ;;
  gzip) tar -xzpf "$CBX_CHUNK" -C "$CBX_STAGE" --no-same-owner ;;
  *) tar -xpf "$CBX_CHUNK" -C "$CBX_STAGE" --no-same-owner ;;
esac || fail "extracting the sync archive failed; $CBX_WORKDIR was left as it was"
