# Stops every process of one run: SIGTERM to each process whose environment holds
# CRABBOX_RUN_ID=$CBX_RUN_ID, up to CBX_GRACE_TICKS tenths of a second for them to exit, then
# SIGKILL sweeps while any remain. Only bash builtins look at each process.
want="CRABBOX_RUN_ID=$CBX_RUN_ID"
signal_run() {
  found=1
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    while IFS= read -r -d '' e; do
      if [ "$e" = "$want" ]; then
        kill -"$1" "$p" 2>/dev/null && found=0
        break
      fi
    done < "$d/environ" 2>/dev/null
  done
  return $found
}
signal_run TERM || exit 0
i=0
while [ "$i" -lt "$CBX_GRACE_TICKS" ] && signal_run 0; do
  sleep 0.1
  i=$((i + 1))
done
r=0
while [ "$r" -lt 10 ] && signal_run KILL; do
  sleep 0.05
  r=$((r + 1))
done
exit 0
