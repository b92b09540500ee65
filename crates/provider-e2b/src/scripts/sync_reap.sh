# Runs after the apply script was SIGKILLed: kills every process whose command line names this
# sync's tag (a tar or tail left running on the upload or the staging directory), then removes
# the sync's files.
# Inputs (environment): CBX_TAG, CBX_ARCHIVE, CBX_STAGE.
for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  c=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  case $c in *"$CBX_TAG"*) kill -KILL "${d#/proc/}" 2>/dev/null ;; esac
done
rm -rf -- "$CBX_STAGE"
rm -f -- "$CBX_ARCHIVE" "$CBX_STAGE.ops" "$CBX_STAGE.rec"
exit 0
