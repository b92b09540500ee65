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
# A request is a name made in CTL, a directory (`a-` is a file; a directory from an older
# crabbox is taken too): `p-<nonce>` asks for the state, answered in CTL/state (written whole,
# then renamed) as NUL-separated fields: `cbxw1`, ID, nonce, `ok` or `lost`, then every path
# (relative to WORKDIR) that had an event since the watches were set (or the last `r-`).
# `r-<nonce>` asks for the changes and forgets them: after the four fields, `C<n>` and the n
# paths, then `E<m>` and the m entries of those that exist now (lstat, six fields each as the
# scan's find prints them: type, mode, size, mtime, ./path, link target), so whoever asked lays
# them over the listing it keeps and counting starts again from there.
# `a-<tag>-<flags>-<id>`, an empty file uploaded after the files it names (in the same upload),
# asks watcher <id> (any other ignores it) to apply a small sync itself, as the unpack and commit
# scripts would, with no process started on the box: the upload
# /tmp/crabbox-<tag>-0.tar (flags `t`) or .tgz (`z`), with `o` the ops and `r` the new record
# beside the staging directory `.<workdir>.crabbox-stage-<tag>`. Making that directory claims the
# sync: whoever makes it first (this watcher, the scripts, or crabbox taking it back) applies it
# or drops it; one that makes it and finds no upload leaves it (it was applied and removed).
# The answer is as for `r-` (the sync's own changes counted, then forgotten) with a fifth field,
# `Aok`, or `A!` and why it failed (then, as for `p-`, the paths that changed, kept counted).
# The upload, ops and record are removed before the answer, the staging directory after it.
# With `u`, a watcher that saw any change since it last answered applies nothing, claims
# nothing and forgets nothing: `A~`, then the paths that changed, as for `p-`.
# Requests are taken one at a time in the order they were made (an apply is answered before a
# question made after it). Events are read in the order the kernel queued them, so when a
# request is taken every change made before it was is already counted (a path whose entries
# change counts, and so does its directory, whose times change with them). `lost` means the
# watcher can no longer tell (queue overflow, a watched directory removed, moved or replaced, a
# listed directory made or removed, the record touched, the workdir itself removed or moved):
# only a full scan can; it is said at once (repeating the last answer's nonce and apply field)
# and the watcher ends. CTL/ready holds ID once the watches are in place (`-` if they cannot
# be). The removal of CTL (a newer watcher's scan remakes it) ends this one.
import ctypes
import os
import select
import shutil
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

    # The last answer's nonce and apply field: said again by the final `lost` answer, so that
    # whoever still waits for it reads it.
    said = [b"", None]

    def answer(nonce, entries=False, applied=None):
        nonlocal lost
        try:
            lost = lost or where() != here
        except OSError:
            lost = True
        said[:] = [nonce, applied]
        tmp = os.path.join(ctl, b"state.tmp-" + ident)
        fields = [b"cbxw1", ident, nonce, b"lost" if lost else b"ok"]
        if applied is not None:
            fields.append(b"A" + applied)
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
    try:
        # For the first sync applied here: not on the way of the scan that waits for `ready`.
        import tarfile  # noqa: F401
    except ImportError:
        pass
    pending = []

    def on_events(buf):
        nonlocal lost
        at = 0
        while at + 16 <= len(buf) and not lost:
            w, mask, _cookie, size = struct.unpack_from("iIII", buf, at)
            name = buf[at + 16:at + 16 + size].rstrip(b"\0")
            at += 16 + size
            if mask & IN_Q_OVERFLOW:
                lost = True
            elif w == ctl_watch:
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    lost = True
                    gone[0] = True
                    return
                # Every request is taken in the order made (the loop), once every event queued
                # before it is counted. `a-`: a file, the last part of the upload it applies
                # (envd writes the parts of one upload in order, so the rest is whole by now);
                # a directory from an older crabbox.
                if name.startswith(b"a-") or (
                        mask & IN_ISDIR and name.startswith((b"p-", b"r-"))):
                    pending.append(name)
            elif w == parent_watch:
                # The workdir's own times and mode do not matter; its going does, and any
                # touch of the record (but this watcher's own storing of it, checked after).
                if name == rec_name and own_record[0] is not None and not mask & GONE:
                    own_record[1] = True
                elif mask & GONE or name == rec_name or (name == base and mask & ENTRIES):
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

    def done_with(name):
        # The request before this one is removed (not this one: envd may still be at the
        # directory or file it just made, setting its owner).
        for old in asked:
            try:
                os.rmdir(os.path.join(ctl, old))
            except NotADirectoryError:
                try:
                    os.unlink(os.path.join(ctl, old))
                except OSError:
                    pass
            except OSError:
                pass
        asked[:] = [name]

    def drain():
        """Counts every event queued by now (the kernel queues one as its change is made)."""
        while not lost:
            if not select.select([fd], [], [], 0)[0]:
                return
            on_events(os.read(fd, 1 << 16))

    # The record as this watcher stored it while applying, and whether an event touched it.
    own_record = [None, False]
    gone = [False]
    while not lost:
        try:
            buf = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        on_events(buf)
        while pending and not lost:
            name = pending.pop(0)
            drain()
            if lost:
                break
            if not name.startswith(b"a-"):
                # `r-`: the changes are answered with what those paths are now, and counting
                # starts again from here.
                reset = name.startswith(b"r-")
                answer(name[2:], entries=reset)
                if reset:
                    changed.clear()
                done_with(name)
                continue
            own_record[:] = [None, False]
            tag, _, rest = name[2:].partition(b"-")
            flags, _, to = rest.partition(b"-")
            stage = None
            if to != ident:
                # Asked of another watcher (this one replaced it): its count is not ours.
                applied = None
            elif b"u" in flags[1:] and changed:
                # To be applied only onto the tree as last answered: it changed since.
                applied = b"~"
            else:
                applied, stage = apply_sync(tag, flags, workdir, record, own_record)
            drain()
            if own_record[1]:
                # Touched while this watcher applied: still the record it stored, or lost.
                try:
                    with open(record, "rb") as f:
                        lost = lost or f.read() != own_record[0]
                except OSError:
                    lost = True
            if own_record[0] is not None:
                # A record that names other directories than those watched: a full scan lists
                # what this watcher cannot see (a new directory's files).
                named = {e[1:] for e in own_record[0].split(b"\0") if e.startswith(b"d")}
                lost = lost or named != dirs - {b""}
            own_record[:] = [None, False]
            # Claimed by a fallback (`-`): it is not this watcher's to answer, and what changed
            # is still to be asked for; so too when not applied (`~`) or failed (`!`).
            if applied is not None and applied != b"-":
                done = applied == b"ok"
                answer(name[2:], entries=done, applied=applied)
                if done:
                    changed.clear()
            # Removed once answered: a fallback that makes it afterwards finds no upload, and
            # reads this answer instead.
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
            done_with(name)
    # Lost for good: said once, repeating the last answer (whoever waits for it reads it), and
    # nothing left to watch for.
    if not gone[0]:
        answer(said[0], applied=said[1])


class Failed(Exception):
    """A sync this watcher cannot apply: why, answered to whoever asked."""


def apply_sync(tag, flags, workdir, record, own_record):
    """Applies sync `tag` (see the header): `ok`, `!` and why it failed, or `-` when another
    claimed it first (or it is gone); None for a request that names no sync of crabbox's. With
    the staging directory this watcher made, to be removed once the answer is written."""
    if not tag.isalnum() or flags[:1] not in (b"t", b"z") or set(flags[1:]) - set(b"oru"):
        return None, None
    parent, _, base = workdir.rpartition(b"/")
    stage = (parent or b"") + b"/." + base + b".crabbox-stage-" + tag
    chunk = b"/tmp/crabbox-" + tag + b"-0." + (b"tar" if flags[:1] == b"t" else b"tgz")
    ops = stage + b".ops" if b"o" in flags else None
    rec = stage + b".rec" if b"r" in flags else None
    try:
        # The claim: whoever makes the staging directory applies the sync.
        os.mkdir(stage, 0o700)
    except FileExistsError:
        return b"-", None
    except OSError as e:
        return b"!cannot create staging directory " + stage + b": " + reason(e), None
    if not os.path.isfile(chunk):
        # Applied and removed by whoever claimed it before (the directory is made anew once
        # it is gone): not this watcher's.
        os.rmdir(stage)
        return b"-", None
    try:
        commit(workdir, stage, chunk, ops, rec, record, own_record)
        return b"ok", stage
    except Failed as e:
        return b"!" + e.args[0], stage
    except Exception as e:
        return b"!" + repr(e).encode("utf-8", "replace"), stage
    finally:
        # The upload first: the staging directory goes only after the answer.
        for f in (chunk, ops, rec):
            try:
                if f is not None:
                    os.unlink(f)
            except OSError:
                pass


def reason(e):
    return (e.strerror or str(e)).encode("utf-8", "replace")


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Dirs:
    """Directories under a root opened one component at a time, never through a symlink;
    each opened once."""

    def __init__(self, root):
        self.fds = {(): os.open(root, DIR_FLAGS)}

    def get(self, parts, create):
        parts = tuple(parts)
        if parts in self.fds:
            return self.fds[parts]
        up = self.get(parts[:-1], create)
        try:
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=up)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(parts[-1], 0o777, dir_fd=up)
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=up)
        self.fds[parts] = fd
        return fd

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def pax_ns(member):
    """The member's exact mtime: its pax `mtime` (decimal seconds, the sign for the whole of
    it) when it has one, else the header's whole seconds."""
    v = member.pax_headers.get("mtime")
    if v is None:
        return int(member.mtime) * 1000000000
    neg = v.startswith("-")
    whole, _, frac = v.lstrip("+-").partition(".")
    ns = int(whole or "0") * 1000000000 + int((frac + "000000000")[:9])
    return -ns if neg else ns


def clean(name):
    parts = name.split(b"/")
    if name.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise Failed(b"the sync archive names an unsafe path: " + name)
    return parts


def extract(chunk, stage, codec):
    """The archive's files and links laid out in the staging directory; their paths, split."""
    import tarfile
    placed = []
    dirs = Dirs(stage)
    try:
        with tarfile.open(chunk, codec, encoding="utf-8", errors="surrogateescape") as tf:
            for m in tf:
                parts = clean(m.name.encode("utf-8", "surrogateescape"))
                d = dirs.get(parts[:-1], True)
                if m.isreg():
                    fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600, dir_fd=d)
                    try:
                        with tf.extractfile(m) as src:
                            while True:
                                piece = memoryview(src.read(1 << 20))
                                if not piece:
                                    break
                                while piece:
                                    piece = piece[os.write(fd, piece):]
                        os.fchmod(fd, m.mode & 0o1777)
                        ns = pax_ns(m)
                        os.utime(fd, ns=(ns, ns))
                    finally:
                        os.close(fd)
                elif m.issym():
                    os.symlink(m.linkname.encode("utf-8", "surrogateescape"), parts[-1], dir_fd=d)
                else:
                    raise Failed(b"the sync archive holds an entry that is neither a file nor a link: "
                                 + b"/".join(parts))
                placed.append(parts)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise Failed(b"extracting the sync archive failed: " + str(e).encode("utf-8", "replace"))
    finally:
        dirs.close()
    return placed


def run_op(wd, dirs, op, p):
    """One of the plan's ops (see sync_commit.sh) on workdir-relative `p`, every directory on
    the way opened from the workdir without following a symlink (`dirs`, a [`Dirs`] of it):
    where one is not a real directory, `c`, `u` and `x` do nothing."""
    parts = p.split(b"/")
    full = wd + b"/" + p

    def lstat_in(d, name):
        try:
            return os.stat(name, dir_fd=d, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None

    def parent():
        try:
            return dirs.get(parts[:-1], False)
        except OSError:
            return None

    def remove(d, name, mode, what):
        try:
            if stat.S_ISDIR(mode):
                remove_tree(d, name, full)
            else:
                os.unlink(name, dir_fd=d)
        except OSError as e:
            raise Failed(b"cannot " + what + b" " + full + b": " + reason(e))

    if op == b"p":
        # Every component a real directory or absent: the first that is not is removed (what
        # lay below it is gone with it).
        d = dirs.get((), False)
        for i, part in enumerate(parts):
            at = wd + b"/" + b"/".join(parts[:i + 1])
            try:
                mode = lstat_in(d, part)
            except OSError as e:
                raise Failed(b"cannot look at " + at + b": " + reason(e))
            if mode is None:
                return
            if not stat.S_ISDIR(mode):
                try:
                    os.unlink(part, dir_fd=d)
                except OSError as e:
                    raise Failed(b"cannot remove " + at + b": " + reason(e))
                return
            d = dirs.get(parts[:i + 1], False)
        return
    d = parent()
    if d is None:
        return
    mode = lstat_in(d, parts[-1])
    if mode is None:
        return
    if op == b"c":
        remove(d, parts[-1], mode, b"remove")
    elif op == b"u" and stat.S_ISDIR(mode):
        remove(d, parts[-1], mode, b"remove")
    elif op == b"x" and (stat.S_ISLNK(mode) or stat.S_ISREG(mode)):
        remove(d, parts[-1], mode, b"delete")
        # Directories the deletion emptied go too, up to the workdir.
        for i in range(len(parts) - 1, 0, -1):
            try:
                os.rmdir(parts[i - 1], dir_fd=dirs.get(parts[:i - 1], False))
            except OSError:
                break


def remove_tree(d, name, full):
    """Removes directory `name` in open directory `d` with all it holds, never following a
    symlink (shutil's own fd-based walk; by path where this Python cannot take a dir_fd)."""
    try:
        shutil.rmtree(name, dir_fd=d)
    except TypeError:
        shutil.rmtree(full)


def commit(wd, stage, chunk, ops, rec, record, own_record):
    """As the unpack then commit scripts: nothing in the workdir is touched until every file is
    staged; then the ops run, the staged files are moved over the workdir, the record stored."""
    left = b"; " + wd + b" was left as it was"
    if ops is not None and not os.path.isfile(ops):
        raise Failed(b"the sync's ops " + ops + b" are missing" + left)
    if rec is not None and not os.path.isfile(rec):
        raise Failed(b"the sync record " + rec + b" is missing" + left)
    codec = "r:" if chunk.endswith(b".tar") else "r:gz"
    try:
        placed = extract(chunk, stage, codec)
    except Failed as e:
        raise Failed(e.args[0] + left)
    try:
        if not stat.S_ISDIR(os.lstat(wd).st_mode):
            raise Failed(wd + b" exists and is not a directory")
    except OSError as e:
        raise Failed(b"cannot enter " + wd + b": " + reason(e))
    if ops is not None:
        with open(ops, "rb") as f:
            entries = [e for e in f.read().split(b"\0") if e]
        for e in entries:
            # Opened afresh for each op: an op before it may have removed what was opened.
            dirs = Dirs(wd)
            try:
                run_op(wd, dirs, e[:1], e[1:])
            finally:
                dirs.close()
    staged, into = Dirs(stage), Dirs(wd)
    try:
        for parts in placed:
            where = b"/".join(parts)
            try:
                src = staged.get(parts[:-1], False)
                dst = into.get(parts[:-1], True)
                os.rename(parts[-1], parts[-1], src_dir_fd=src, dst_dir_fd=dst)
            except OSError as e:
                raise Failed(b"updating " + wd + b" from the staged files failed: " + where
                             + b": " + reason(e))
    finally:
        staged.close()
        into.close()
    if rec is not None:
        with open(rec, "rb") as f:
            new = f.read()
        try:
            with open(record, "rb") as f:
                same = not os.path.islink(record) and f.read() == new
        except OSError:
            same = False
        if not same:
            own_record[0] = new
            try:
                os.rename(rec, record)
            except OSError as e:
                raise Failed(b"storing the sync record " + record + b" failed: " + reason(e))


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
