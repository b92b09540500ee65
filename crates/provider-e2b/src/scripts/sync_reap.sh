# Runs after the apply script was SIGKILLed: kills every process whose command line names this
# sync's archive (a tar left extracting), then removes the sync's files.
# Inputs (environment): CBX_ARCHIVE, CBX_STAGE, optional CBX_DELETE.
for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  c=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  case $c in *"$CBX_ARCHIVE"*) kill -KILL "${d#/proc/}" 2>/dev/null ;; esac
done
rm -rf -- "$CBX_STAGE"
rm -f -- "$CBX_ARCHIVE"
if [ -n "${CBX_DELETE:-}" ]; then rm -f -- "$CBX_DELETE"; fi
exit 0
