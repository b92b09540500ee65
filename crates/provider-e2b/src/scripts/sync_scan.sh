# Reads the synced tree in one pass, never through a symlink. Output on stdout, NUL-separated:
#   N                 the workdir is missing (nothing follows), else W, then
#   w<id>             when a watcher (CBX_WATCHER, see sync_watch.py) with id CBX_WATCH_ID
#                     watches the tree from before the listing below was taken;
#   R<len>            when there is a sync record: its length, then exactly <len> bytes of it
#                     (or r alone when its SHA-256 is CBX_KNOWN_RECORD: the caller has it);
#   E                 then six fields for the workdir, each directory the record names, and every
#                     child of those that are directories: type (%y), mode (%m), size, mtime
#                     (%T@), ./path, link target. A listed directory shows as type d at its own
#                     path (a symlink in its place shows as l and is not entered);
#   H                 with CBX_CHECKSUM=1, then `<sha256>  ./path` for each regular file listed.
#   e                 in place of all of E... when their SHA-256 is CBX_KNOWN_LIST (the caller
#                     holds that listing: the tree is as it last read it).
# It also removes what syncs killed outright (kill -9) left behind: staging directories of this
# workdir and uploads in /tmp older than CBX_STALE_MINUTES (longer than any sync may take).
# Inputs (environment): CBX_WORKDIR, CBX_RECORD, CBX_CHECKSUM, CBX_STALE_MINUTES, CBX_KNOWN_RECORD,
# CBX_KNOWN_LIST, and to start a watcher CBX_WATCHER (its source), CBX_WATCH_ID, CBX_WATCH_CTL (its
# control directory, made anew: an older watcher of this workdir ends when it is removed) and
# CBX_WATCH_WAIT_TICKS (how many 5 ms ticks its start is waited for; 400 when unset).
set -u
wd=$CBX_WORKDIR
rec=$CBX_RECORD
if [ -n "${CBX_STALE_MINUTES:-}" ]; then
  find "$(dirname -- "$wd")" -mindepth 1 -maxdepth 1 -name ".${wd##*/}.crabbox-stage-*" \
    -mmin +"$CBX_STALE_MINUTES" -exec rm -rf -- {} + 2>/dev/null
  find /tmp -mindepth 1 -maxdepth 1 -name 'crabbox-*' -user "$(id -u)" \
    -mmin +"$CBX_STALE_MINUTES" -exec rm -rf -- {} + 2>/dev/null
fi
if [ -L "$wd" ] || [ ! -d "$wd" ]; then printf 'N\0'; exit 0; fi
cd -- "$wd" || { printf 'N\0'; exit 0; }
printf 'W\0'
sha() { sha256sum | cut -c1-64; }
command -v sha256sum >/dev/null 2>&1 || CBX_KNOWN_RECORD='' CBX_KNOWN_LIST=''
dirs=$(mktemp) || exit 1
# The record is read once, into a copy: the directories listed and the record sent are the same.
copy=$(mktemp) || exit 1
listing=
second=
trap 'rm -f -- "$dirs" "$copy" ${listing:+"$listing"} ${second:+"$second"}' EXIT
have_rec=
if [ -f "$rec" ] && [ ! -L "$rec" ] && cat -- "$rec" > "$copy" 2>/dev/null; then have_rec=1; fi
{
  printf '.\0'
  if [ -n "$have_rec" ]; then grep -z '^d' -- "$copy" | sed -z 's|^d|./|'; fi
} > "$dirs"
# The watcher's watches are in place before the record and the tree are read, so whatever
# changes after this reading is an event it counts.
ctl=${CBX_WATCH_CTL:-}
if [ -n "$ctl" ] && [ -n "${CBX_WATCH_ID:-}" ] && command -v python3 >/dev/null 2>&1 \
  && rm -rf -- "$ctl" && mkdir -p -- "$ctl"; then
  setsid python3 -c "$CBX_WATCHER" "$ctl" "$wd" "$dirs" "$CBX_WATCH_ID" "$rec" \
    </dev/null >/dev/null 2>&1 &
  i=0
  ticks=${CBX_WATCH_WAIT_TICKS:-400}
  case $ticks in '' | *[!0-9]*) ticks=400 ;; esac
  while [ "$i" -lt "$ticks" ]; do
    got=
    if [ -f "$ctl/ready" ]; then read -r got < "$ctl/ready"; fi
    # Vouched for only if the record is still the one copied before the watches were set.
    if [ "$got" = "$CBX_WATCH_ID" ] && if [ -n "$have_rec" ]; then cmp -s -- "$copy" "$rec"; \
      else [ ! -e "$rec" ] && [ ! -L "$rec" ]; fi; then
      printf 'w%s\0' "$CBX_WATCH_ID"
    fi
    if [ -n "$got" ]; then break; fi
    sleep 0.005
    i=$((i + 1))
  done
fi
if [ -n "$have_rec" ]; then
  if [ -n "${CBX_KNOWN_RECORD:-}" ] && [ "$(sha < "$copy")" = "$CBX_KNOWN_RECORD" ]; then
    printf 'r\0'
  else
    printf 'R%s\0' "$(wc -c < "$copy")"
    cat -- "$copy"
  fi
fi
list() { xargs -0 -r sh -c 'find "$@" -maxdepth 1 '"$1" find 2>/dev/null; }
# Lists the directories in two halves side by side where the box has two cores (stat-bound
# work), the second half printed after the first, so an unchanged tree lists the same bytes.
entries_of() {
  n=$(tr -cd '\0' < "$dirs" | wc -c)
  if [ "$n" -lt 256 ] || [ "$(nproc 2>/dev/null || echo 1)" -lt 2 ]; then
    list "$1" < "$dirs"
    return
  fi
  second=$(mktemp) || exit 1
  tail -z -n +$((n / 2 + 1)) -- "$dirs" | list "$1" > "$second" &
  half=$!
  head -z -n $((n / 2)) -- "$dirs" | list "$1"
  wait "$half"
  cat -- "$second"
  rm -f -- "$second"
}
entries() {
  printf 'E\0'
  entries_of '-printf "%y\0%m\0%s\0%T@\0%p\0%l\0"'
  if [ "${CBX_CHECKSUM:-}" = 1 ]; then
    printf 'H\0'
    list '-type f -print0' < "$dirs" | xargs -0 -r sha256sum -z -- 2>/dev/null
  fi
}
if [ -n "${CBX_KNOWN_LIST:-}" ]; then
  listing=$(mktemp) || exit 1
  entries > "$listing"
  if [ "$(sha < "$listing")" = "$CBX_KNOWN_LIST" ]; then printf 'e\0'; else cat -- "$listing"; fi
else
  entries
fi
exit 0
