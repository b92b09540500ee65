# Watches a synced tree so a later scan can learn, without listing it, that nothing in it
# changed. Started by the scan script, once its watches are in place, before the scan lists the
# tree: any change after the listing is an inotify event here.
#
# argv: CTL WORKDIR DIRS ID RECORD
#   CTL      this workdir's control directory (the watcher's state and requests)
#   WORKDIR  the synced tree
#   DIRS     file of NUL-separated directories the scan lists (`.`, `./a/b`), watched each
#   ID       this watcher's id, named in every answer
#   RECORD   the sync record's path (in WORKDIR's parent)
#
# A request is a directory made in CTL: `p-<nonce>` asks for the state, answered in CTL/state
# (written whole, then renamed) as NUL-separated fields: `cbxw1`, ID, nonce, `ok` or `lost`, then
# every path (relative to WORKDIR) that had an event since the watches were set (or the last
# `r-`). `r-<nonce>` asks for the changes and forgets them: after the four fields, `C<n>` and the
# n paths, then `E<m>` and the m entries of those that exist now (lstat, six fields each as the
# scan's find prints them: type, mode, size, mtime, ./path, link target), so whoever asked lays
# them over the listing it keeps and counting starts again from there.
# Events are read in the order the kernel queued them, so when the request is read every change
# made before it was is already counted (a path whose entries change counts, and so does its
# directory, whose times change with them). `lost` means the watcher can no longer tell (queue
# overflow, a watched directory removed, moved or replaced, a listed directory made or removed,
# the record touched, the workdir itself removed or moved): only a full scan can; it is said at
# once (with no nonce) and the watcher ends. CTL/ready holds ID once the watches are in place
# (`-` if they cannot be). The removal of CTL (a newer watcher's scan remakes it) ends this one.
import ctypes
import os
import stat
import struct
import sys

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT = 0x400, 0x800, 0x2000
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_DONT_FOLLOW = 0x4000, 0x8000, 0x1000000, 0x2000000
IN_ISDIR, IN_CLOEXEC = 0x40000000, 0o2000000
CHANGES = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
ENTRIES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
MOST_PATHS = 100000


def relative(listed):
    return b"" if listed == b"." else listed[2:] if listed.startswith(b"./") else listed


STARTED = []


def ready(ctl, what):
    STARTED.append(what)
    tmp = os.path.join(ctl, b"ready.tmp-%d" % os.getpid())
    with open(tmp, "wb") as f:
        f.write(what + b"\n")
    os.rename(tmp, os.path.join(ctl, b"ready"))


def main(ctl, workdir, dirs_file, ident, record):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    if fd < 0:
        return

    def watch(path, mask):
        w = libc.inotify_add_watch(fd, path, mask | IN_DONT_FOLLOW | IN_ONLYDIR)
        return w if w >= 0 else None

    ctl_watch = watch(ctl, IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF)
    parent, _, base = workdir.rpartition(b"/")
    rec_parent, _, rec_name = record.rpartition(b"/")
    if ctl_watch is None or rec_parent != parent:
        return
    parent_watch = watch(parent or b"/", CHANGES)
    if parent_watch is None:
        return
    # The workdir and its parent as they are now: another directory in their place (made
    # through a path no watch sees) is the same as losing track.
    def where():
        return [(st.st_dev, st.st_ino) for st in (os.stat(workdir), os.stat(parent or b"/"))]
    here = where()
    with open(dirs_file, "rb") as f:
        listed = [d for d in f.read().split(b"\0") if d]
    rel = {}
    for d in listed:
        r = relative(d)
        path = os.path.join(workdir, r) if r else workdir
        w = watch(path, CHANGES)
        if w is not None:
            rel[w] = r
            continue
        # A listed directory missing (or not a directory) now: its making is seen by its
        # parent's watch, and counts as lost below. One that is there but cannot be watched
        # (the user's inotify watch limit) would go unseen: no watcher then.
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return
        except OSError:
            pass
    dirs = {relative(d) for d in listed}
    changed, lost = set(), False
    asked = []

    def answer(nonce, entries=False):
        nonlocal lost
        try:
            lost = lost or where() != here
        except OSError:
            lost = True
        tmp = os.path.join(ctl, b"state.tmp-" + ident)
        fields = [b"cbxw1", ident, nonce, b"lost" if lost else b"ok"]
        paths = sorted(changed)
        if entries:
            found = [e for e in map(entry, paths) if e]
            fields += [b"C%d" % len(paths)] + paths + [b"E%d" % len(found)]
            fields += [f for e in found for f in e]
        else:
            fields += paths
        with open(tmp, "wb") as f:
            f.write(b"\0".join(fields) + b"\0")
        os.rename(tmp, os.path.join(ctl, b"state"))

    def entry(path):
        """The path's listing entry now, as the scan's find prints it; None when gone."""
        full = os.path.join(workdir, path)
        try:
            st = os.lstat(full)
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else b""
        except OSError:
            return None
        kind = (b"f" if stat.S_ISREG(st.st_mode) else b"d" if stat.S_ISDIR(st.st_mode)
                else b"l" if stat.S_ISLNK(st.st_mode) else b"o")
        secs, nanos = divmod(st.st_mtime_ns, 1000000000)
        return [kind, b"%o" % (st.st_mode & 0o7777), b"%d" % st.st_size,
                b"%d.%09d" % (secs, nanos), b"./" + path, link]

    answer(b"ready")
    ready(ctl, ident)
    while not lost:
        try:
            buf = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        at = 0
        while at + 16 <= len(buf) and not lost:
            w, mask, _cookie, size = struct.unpack_from("iIII", buf, at)
            name = buf[at + 16:at + 16 + size].rstrip(b"\0")
            at += 16 + size
            if mask & IN_Q_OVERFLOW:
                lost = True
            elif w == ctl_watch:
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    return
                if not mask & IN_ISDIR:
                    continue
                if name.startswith((b"p-", b"r-")):
                    # `r-`: the changes are answered with what those paths are now, and counting
                    # starts again from here.
                    reset = name.startswith(b"r-")
                    answer(name[2:], entries=reset)
                    if reset:
                        changed.clear()
                    # The request before this one is removed (not this one: envd may still be
                    # looking at the directory it just made).
                    for old in asked:
                        try:
                            os.rmdir(os.path.join(ctl, old))
                        except OSError:
                            pass
                    asked[:] = [name]
            elif w == parent_watch:
                # The workdir's own times and mode do not matter; its going does, and any
                # touch of the record.
                if mask & GONE or name == rec_name or (name == base and mask & ENTRIES):
                    lost = True
            elif w in rel:
                if mask & GONE:
                    lost = True
                    continue
                if not name:
                    # The watched directory's own times or mode: its entry in its parent.
                    if rel[w]:
                        changed.add(rel[w])
                    continue
                path = rel[w] + b"/" + name if rel[w] else name
                # A listed directory's name made, removed or renamed (as a directory or not:
                # a symlink in its place lists differently too).
                if mask & ENTRIES and path in dirs:
                    lost = True
                    continue
                changed.add(path)
                # A name made or gone changes its directory's times too.
                if mask & ENTRIES and rel[w]:
                    changed.add(rel[w])
                if len(changed) > MOST_PATHS:
                    lost = True
    # Lost for good: said once, and nothing left to watch for.
    answer(b"")


if __name__ == "__main__":
    # Holding no descriptor of whoever started it (a pipe held open would keep that
    # command's output stream from ending).
    os.closerange(3, 1 << 16)
    args = [os.fsencode(a) for a in sys.argv[1:6]]
    try:
        main(*args)
    except Exception:
        pass
    # Never ready: the scan waiting for it goes on without it.
    try:
        if not STARTED:
            ready(args[0], b"-")
    except Exception:
        pass
