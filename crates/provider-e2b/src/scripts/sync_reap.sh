# Runs after a sync was abandoned: kills every process whose command line names this sync's
# tag (an unpack script, tail or tar left running on an upload or the staging directory; the
# scripts SIGKILLed by pid skip their traps), then removes the sync's files.
# Inputs (environment): CBX_TAG, CBX_STAGE, and CBX_CTL, the tree watcher's control directory
# (a request to it names the tag).
for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  c=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  case $c in *"$CBX_TAG"*) kill -KILL "${d#/proc/}" 2>/dev/null ;; esac
done
rm -rf -- "$CBX_STAGE"
rm -f -- "$CBX_STAGE.ops" "$CBX_STAGE.rec" /tmp/crabbox-"$CBX_TAG"-*
[ -z "$CBX_CTL" ] || rm -f -- "$CBX_CTL"/a-"$CBX_TAG"-*
exit 0
