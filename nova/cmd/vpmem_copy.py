# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Root helper that reads, writes and zeroes vPMEM namespaces.

``nova-vpmem-copy`` is the only privileged step of the vPMEM copy done on
cold migration and resize (see ``nova.virt.libvirt.vpmem_copy``).
nova-compute runs it through ``sudo -n`` (``[libvirt]
vpmem_copy_root_helper``), locally and on the destination host over ssh, so
it must be allowed for the nova user in sudoers, e.g.::

    nova ALL = (root) NOPASSWD: /usr/bin/nova-vpmem-copy

Subcommands:

``send``
    Read a byte range of a namespace and write it to stdout as a framed
    stream: all-zero chunks become small ZERO records, other chunks DATA
    records with a per-chunk digest, and an END record carries the counts.
    With ``--live`` it may read a namespace that a running guest maps (the
    first pass of a pre-copy); only ``send`` has that mode, and it only
    reads. With ``--with-record`` it reads from stdin the digests of what
    an earlier pass left on the destination, and sends a chunk whose
    digest is unchanged as a SAME record without its data.
``receive``
    Write a framed stream from stdin into a byte range of a namespace. Chunks
    announced as zero are checked and zeroed only if needed, every DATA chunk
    is hashed again from the destination after it landed, and the command
    exits non-zero on a truncated or corrupted stream or a missing END. The
    range may start at another offset than the one it was read from
    (``--source-offset``): a guest's label area moves to the end of a larger
    namespace. A SAME record is checked against the destination's own chunk;
    one that does not match is listed as stale in the final report, for the
    caller to send again. ``--record`` prints the digest of every DATA
    chunk that landed, which is the record of a pre-copy's first pass.
``zero``
    Zero a namespace, or a byte range of it.
``check``
    Print the protocol version and the digests this host can verify, after
    checking each ``--namespace`` as a receiver would: it may write it, it
    holds at least ``--length`` bytes, nobody uses it (with ``--sources``,
    as a sender would: it may read it, and its guest may still run).
    nova-compute runs it on both hosts before it powers the instance off.

Every call acts for one instance (``--instance``) and names namespaces,
never devices. The helper finds a namespace's device in ``ndctl list -X``,
among those named in ``[libvirt] pmem_namespaces`` of nova's configuration
files, which must be owned by root and writable by root only (the caller
may name nova-compute's files with ``--config-file``, never write them).
Then this host's owners file, which nova-compute keeps in ``[DEFAULT]
state_path`` (``nova.virt.libvirt.vpmem_owners``), must give the namespace
to the instance: ``send`` reads only the instance's namespaces, ``receive``
writes only those given to it for its move to this host, and ``zero``
zeroes only the instance's or already zeroed ones. A stale or foreign name
never reaches another server's data. For its whole run the helper then
holds POSIX locks on the device: a shared one on a byte past the end
of any namespace that marks it as a helper, and one on the range it works
on, shared to read and exclusive to write, so that two helpers never write
one range and nova's own zeroing (which locks the whole device) never runs
beside a helper; ``zero`` stops the helpers whose locks are in its way.
Unless a pre-copy's first pass reads a running guest's namespace, no other
process may have the device open or mapped, compared by device number;
a process that cannot be inspected counts as a user.

This module and the stream format it shares with the copy engine
(``nova.virt.vpmem_stream``) deliberately depend on the standard library
only, so that the code running as root is small and can be audited on its
own.
"""

import argparse
import configparser
import ctypes
import fcntl
import functools
import glob
import hashlib
import importlib.util
# The root helper keeps its imports to the standard library: they are
# audited with it and each stream starts faster.
import json
import mmap
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess  # nosec: B404 argv lists only, never a shell
import sys
import time
import uuid

from nova.virt import vpmem_stream as stream

PROGRESS_EVERY = 64 * 1024 * 1024
# ... and at least this often (seconds), so that a receiver whose caller
# died (a killed nova-compute) fails on its next write within a second, and
# with it the ssh connection and the sender, instead of copying on.
PROGRESS_SECONDS = 1.0
# Every helper holds a shared lock on this byte of its device for its whole
# run, past the end of any namespace: it tells the other helpers that the
# process is one of them, and nova's own zeroing (which locks the whole
# device) that a helper is running. The range a helper works on is locked
# too: shared to read it, exclusive to write it.
HELPER_MARK = 1 << 62
# Tries, 50 ms apart, before a process that uses the device without the
# mark counts as a user: a helper opens the device before it marks it.
MARK_TRIES = 20
# Seconds zero waits for other helpers to let go of the device.
HELPER_EXIT_WAIT = 30
# Seconds a helper stopped by zero gets between SIGTERM and SIGKILL.
HELPER_KILL_GRACE = 5
# Programs run as root come from these directories only, whatever PATH the
# caller had.
SAFE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
# nova-compute's configuration, read for [libvirt] pmem_namespaces: the
# namespaces that nova may give to guests, and so the only ones the helper
# touches. Later files win, as with oslo.config. --config-file and
# --config-dir (nova-compute's own) replace these defaults.
NOVA_CONFIG_FILES = ('/etc/nova/nova.conf', '/etc/nova/nova-compute.conf')
NOVA_CONFIG_DIR = '/etc/nova/nova.conf.d'
# ... and they count only when this user owns them and nobody else may
# write them: they decide which devices root writes.
CONFIG_OWNER = 0
# The configuration this run reads: main() sets it from the command line.
_config = {'files': (), 'directories': (), 'instance': None}
# What this run has read (see _per_run).
_run: dict = {}
F_SETPIPE_SZ = 1031
# Prefaulting the mapping in one call is much cheaper than a page fault per
# page while copying.
_MAP_POPULATE = getattr(mmap, 'MAP_POPULATE', 0)

# Exit codes: the caller only needs "zero or not", the values help humans.
EXIT_USAGE = 2
EXIT_TRUNCATED = 3
EXIT_MISMATCH = 4
EXIT_PROTOCOL = 5
EXIT_DENIED = 6


class HelperError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# Digests by name, fastest first, with the module that provides them (None
# for the standard library). Modules are imported only when used, to keep
# the start of every stream short.
_DIGEST_MODULES = {'xxh3_64': 'xxhash', 'blake3': 'blake3', 'sha256': None,
                   'blake2b': None}


def available_digests():
    return [name for name, module in _DIGEST_MODULES.items()
            if module is None or importlib.util.find_spec(module)]


def best_digest():
    return available_digests()[0]


@functools.lru_cache(maxsize=None)
def _digest_function(name):
    if name == 'xxh3_64':
        import xxhash
        return lambda data: xxhash.xxh3_64(data).digest()
    if name == 'blake3':
        import blake3
        return lambda data: blake3.blake3(data).digest(
            length=stream.DIGEST_SIZE)
    if name == 'sha256':
        return lambda data: hashlib.sha256(data).digest()
    return lambda data: hashlib.blake2b(
        data, digest_size=stream.DIGEST_SIZE).digest()


def _digest(name, view):
    """Digest of view, padded to the DIGEST_SIZE bytes of a record."""
    if name == 'none':
        return stream.NO_DIGEST
    return _digest_function(name)(view).ljust(stream.DIGEST_SIZE, b'\0')


# -- namespace allow-list ----------------------------------------------------

def _per_run(func):
    """Call func once per run of the helper; main() starts a run."""
    @functools.wraps(func)
    def once():
        if func.__name__ not in _run:
            _run[func.__name__] = func()
        return _run[func.__name__]
    return once


@_per_run
def known_namespaces():
    """Return {name: {'path': devpath, 'size': bytes, 'align': bytes}}.

    The device-DAX namespaces of this host that ndctl lists and nova may
    give to guests; ndctl runs once per run of the helper.
    """
    allowed = _nova_namespace_names(_nova_config())
    ndctl = shutil.which('ndctl', path=SAFE_PATH)
    if not ndctl:
        raise HelperError(EXIT_USAGE, 'ndctl is not installed in %s' %
                          SAFE_PATH)
    out = subprocess.run(  # nosec: B603 fixed argv, absolute path
        [ndctl, 'list', '-X'], check=True, capture_output=True,
        timeout=60, env={'PATH': SAFE_PATH}).stdout
    namespaces = {}
    for ns in json.loads(out or b'[]'):  # noqa: N324
        if ns.get('name') not in allowed:
            continue
        region = ns.get('daxregion') or {}
        devices = region.get('devices') or []
        # Older ndctl releases print chardev and align at the top level.
        chardev = devices[0]['chardev'] if devices else ns.get('chardev')
        if not chardev:
            continue
        namespaces[ns['name']] = {
            'path': '/dev/' + chardev, 'size': int(ns['size']),
            'align': int(region.get('align') or ns.get('align') or
                         mmap.PAGESIZE)}
    return namespaces


def _config_paths(files, directories):
    """[(path, whether it must exist)] of the files to read, in order."""
    def conf_d(path):
        return [(f, True) for f in sorted(glob.glob(os.path.join(path,
                                                                 '*.conf')))]
    if not files and not directories:
        return [(f, False) for f in NOVA_CONFIG_FILES] + conf_d(
            NOVA_CONFIG_DIR)
    return [(f, True) for f in files] + [
        entry for d in directories for entry in conf_d(d)]


@_per_run
def _nova_config():
    """Read nova-compute's configuration files, root-owned ones only."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    for path, required in _config_paths(_config['files'],
                                        _config['directories']):
        try:
            f = open(path, encoding='utf-8')
        except FileNotFoundError:
            if required:
                raise HelperError(EXIT_USAGE, '%s does not exist' % path)
            continue
        with f:
            # Checked on the open file: the path may change under us.
            st = os.fstat(f.fileno())
            if st.st_uid != CONFIG_OWNER or st.st_mode & (stat.S_IWGRP |
                                                          stat.S_IWOTH):
                raise HelperError(EXIT_DENIED, '%s must be owned by uid %d '
                                  'and writable by it only: it names the '
                                  'namespaces that may be written as root'
                                  % (path, CONFIG_OWNER))
            parser.read_file(f, source=path)
    return parser


def _nova_namespace_names(config):
    """Return the namespace names in nova's [libvirt] pmem_namespaces."""
    value = config.get('libvirt', 'pmem_namespaces', fallback='')
    names: set[str] = set()
    for group in filter(None, value.split(',')):
        names.update(filter(None, group.partition(':')[2].split('|')))
    if not names:
        paths = _config_paths(_config['files'], _config['directories'])
        raise HelperError(EXIT_DENIED, 'no [libvirt] pmem_namespaces in %s'
                          % ', '.join(p for p, _ in paths))
    return names


def _owners_path(config):
    """The owners file of nova-compute's [DEFAULT] state_path and host."""
    # nova's defaults: state_path is where the nova package is installed.
    state_path = config.get('DEFAULT', 'state_path', fallback=None) or (
        os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(stream.__file__)))))
    host = config.get('DEFAULT', 'host', fallback=None) or socket.gethostname()
    if '$' in state_path + host:
        raise HelperError(EXIT_USAGE, 'set [DEFAULT] state_path and host '
                          'without $ substitutions for nova-vpmem-copy')
    return os.path.join(state_path, stream.OWNERS_FILE % host)


def _owners():
    """Return (owners, incoming) of this host's owners file.

    nova-compute writes it: a namespace it has no record of is nobody's.
    """
    path = _owners_path(_nova_config())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}, {}
    except OSError as e:
        # ELOOP: a symlink, which nova-compute never writes there.
        raise HelperError(EXIT_DENIED, 'cannot read %s: %s' % (path, e))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HelperError(EXIT_DENIED, '%s is not a regular file' % path)
        text = os.read(fd, stream.MAX_OWNERS_FILE_SIZE + 1)
    finally:
        os.close(fd)
    try:
        if len(text) > stream.MAX_OWNERS_FILE_SIZE:
            raise ValueError('larger than %d bytes' %
                             stream.MAX_OWNERS_FILE_SIZE)
        return stream.parse_owners(text)
    except ValueError as e:
        raise HelperError(EXIT_DENIED, '%s is not an owners file: %s' % (
            path, e))


def _check_namespace(name, offset, length, use):
    """Return (path, namespace, length) of a range this run may use.

    :param use: 'read' a namespace this host records as the instance's,
        'write' one it gave to the instance moving here, or 'zero' one of
        the instance's or one recorded as zeroed
    """
    namespaces = known_namespaces()
    if name not in namespaces:
        raise HelperError(EXIT_DENIED, '%s is not a vPMEM namespace of this '
                          'host' % name)
    instance = _config['instance']
    owners, incoming = _owners()
    allowed = {'read': owners.get(name) == instance,
               'write': incoming.get(name) == instance,
               'zero': owners.get(name) in (instance, stream.ZEROED)}[use]
    if not allowed:
        raise HelperError(EXIT_DENIED, 'this host did not give namespace %s '
                          'to instance %s%s (it records %s)' % (
                              name, instance,
                              ' for its move here' if use == 'write' else '',
                              owners.get(name, 'no owner')))
    ns = namespaces[name]
    if length is None:
        length = ns['size'] - offset
    if offset < 0 or length < 0 or offset + length > ns['size']:
        raise HelperError(EXIT_USAGE, 'range %d+%d is outside %s (%d bytes)'
                          % (offset, length, name, ns['size']))
    return ns['path'], ns, length


# -- exclusion ---------------------------------------------------------------

def _node(st):
    """How /proc/locks and /proc/PID/maps name the file of stat result st."""
    return '%02x:%02x' % (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino


def _lock(fd, exclusive, offset, length):
    """Lock [offset, offset + length) of fd; False if another holds it."""
    try:
        fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) |
                    fcntl.LOCK_NB, length, offset)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _helpers(st, offset=0, length=None):
    """Pids of the helpers that hold a lock on [offset, offset + length).

    A helper is a process that holds HELPER_MARK of the device (a tenant
    cannot take it); its other lock says which range it works on.
    """
    dev, ino = _node(st)
    end = None if length is None else offset + length
    marked, overlapping = set(), set()
    with open('/proc/locks') as f:
        for line in f:
            # "1: POSIX ADVISORY WRITE PID MAJ:MIN:INODE START END"; the
            # lines of waiting requests have one more field, "->".
            fields = line.split()
            if (len(fields) != 8 or fields[1] != 'POSIX' or
                    fields[5] != '%s:%d' % (dev, ino)):
                continue
            pid, start = int(fields[4]), int(fields[6])
            stop = HELPER_MARK + 1 if fields[7] == 'EOF' else int(fields[7])
            if start == HELPER_MARK:
                marked.add(pid)
            elif end is not None and start < end and offset <= stop:
                overlapping.add(pid)
    return marked if end is None else marked & overlapping


def _uses(pid, st):
    """Tell whether process pid has the file of st open or mapped."""
    fd_dir = '/proc/%s/fd' % pid
    for fd in os.listdir(fd_dir):
        try:
            other = os.stat(os.path.join(fd_dir, fd))
        except FileNotFoundError:
            continue
        if stat.S_ISCHR(st.st_mode):
            if stat.S_ISCHR(other.st_mode) and other.st_rdev == st.st_rdev:
                return True
        elif (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    # QEMU need not keep a descriptor of what it mapped.
    dev, ino = _node(st)
    with open('/proc/%s/maps' % pid) as f:
        for line in f:
            fields = line.split(None, 5)
            if fields[3:5] == [dev, str(ino)]:
                return True
    return False


def _ancestors():
    """Pids of the processes that started this one, up to init."""
    pids = set()
    pid = os.getpid()
    while pid > 1:
        with open('/proc/%d/stat' % pid) as f:
            pid = int(f.read().rsplit(')', 1)[1].split()[1])
        pids.add(pid)
    return pids


def _user_of(fd):
    """Return the pid of a process other than a helper using fd's device.

    Devices are compared by number, never by path or command line. A
    process that cannot be inspected counts as a user, unless it started
    this helper (a sandbox's init may hide its descriptors even from
    root).
    """
    st = os.fstat(fd)
    me = os.getpid()
    ancestors = _ancestors()
    for _attempt in range(MARK_TRIES):
        helpers = _helpers(st)
        for pid in filter(str.isdigit, os.listdir('/proc')):
            if int(pid) == me or int(pid) in helpers:
                continue
            try:
                if _uses(pid, st):
                    break
            except (FileNotFoundError, ProcessLookupError):
                continue
            except OSError as e:
                if int(pid) in ancestors:
                    continue
                raise HelperError(EXIT_DENIED, 'cannot tell whether process '
                                  '%s uses the device: %s' % (pid, e))
        else:
            return None
        # A helper starting now opens the device before it marks it.
        time.sleep(0.05)
    return int(pid)


def _refuse_users(fd, device):
    user = _user_of(fd)
    if user:
        raise HelperError(EXIT_DENIED, '%s is in use by process %s' % (
            device, user))


def _stop_helpers(fd, offset, length, timeout=HELPER_EXIT_WAIT,
                  grace=HELPER_KILL_GRACE):
    """Take the exclusive lock of a range, stopping the helpers holding it.

    Zeroing means a copy was given up on, but a receiver whose caller was
    killed may still write what its stream had buffered, or hang. Helpers
    whose locks overlap the range get SIGTERM, then SIGKILL after
    ``grace`` seconds, through pidfds: a pid reused meanwhile is not hit.
    """
    st = os.fstat(fd)
    deadline = time.monotonic() + timeout
    stopping: dict[int, tuple[int, float]] = {}
    try:
        while not _lock(fd, True, offset, length):
            now = time.monotonic()
            if now > deadline:
                raise HelperError(EXIT_DENIED, 'the device is still locked '
                                  'by nova-vpmem-copy processes %s after %d '
                                  'seconds' % (sorted(stopping), timeout))
            for pid in _helpers(st, offset, length) - set(stopping):
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                if pid not in _helpers(st, offset, length):
                    os.close(pidfd)
                    continue
                stopping[pid] = (pidfd, now)
                _signal(pidfd, signal.SIGTERM)
            for pidfd, since in stopping.values():
                if now - since > grace:
                    _signal(pidfd, signal.SIGKILL)
            time.sleep(0.1)
    finally:
        for pidfd, _since in stopping.values():
            os.close(pidfd)


def _signal(pidfd, signum):
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass


# -- device mapping ----------------------------------------------------------

class _Mapping(object):
    """A MAP_SHARED window onto [offset, offset + length) of a device.

    Device-DAX only maps at multiples of its alignment, so the window is
    widened to the alignment and ``view`` exposes the requested range.
    """

    def __init__(self, device, offset, length, align, writable,
                 allow_in_use=False, stop_helpers=False):
        self.fd = os.open(device, os.O_RDWR if writable else os.O_RDONLY)
        try:
            self._claim(device, offset, length, writable, allow_in_use,
                        stop_helpers)
            self._map(offset, length, align, writable)
        except BaseException:
            os.close(self.fd)
            raise

    def _claim(self, device, offset, length, writable, allow_in_use,
               stop_helpers):
        """Lock the range for this helper; check that no guest uses it."""
        if not _lock(self.fd, False, HELPER_MARK, 1):
            raise HelperError(EXIT_DENIED, '%s is locked: nova is zeroing '
                              'it' % device)
        if stop_helpers:
            _stop_helpers(self.fd, offset, length)
        elif not _lock(self.fd, writable, offset, length):
            raise HelperError(EXIT_DENIED, 'bytes %d+%d of %s are locked by '
                              'another nova-vpmem-copy' % (offset, length,
                                                           device))
        if not allow_in_use:
            _refuse_users(self.fd, device)

    def _map(self, offset, length, align, writable):
        self.is_dax = stat.S_ISCHR(os.fstat(self.fd).st_mode)
        align = max(align, mmap.PAGESIZE)
        start = offset - offset % align
        end = offset + length
        if end % align:
            end += align - end % align
        size = os.fstat(self.fd).st_size
        if not self.is_dax:
            end = min(end, size)
        self.map = mmap.mmap(
            self.fd, end - start, mmap.MAP_SHARED | _MAP_POPULATE,
            mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0),
            offset=start)
        self.view = memoryview(self.map)[offset - start:
                                         offset - start + length]
        self._persist = None
        if writable and self.is_dax:
            self._persist = _libpmem_persist()

    def persist(self):
        """Make the written range durable.

        msync() is not supported on device-DAX, so flush the CPU caches
        with libpmem's pmem_persist() there, as daxio does.
        """
        if self._persist:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(self.view))
            self._persist(ctypes.c_void_p(addr),
                          ctypes.c_size_t(len(self.view)))
        else:
            self.map.flush()

    def close(self):
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            # A traceback still references a slice of the mapping; it is
            # unmapped when the process exits.
            pass
        os.close(self.fd)


def _libpmem_persist():
    # By soname through the dynamic loader's cache: find_library would run
    # compilers found on PATH.
    try:
        lib = ctypes.CDLL('libpmem.so.1')
    except OSError:
        raise HelperError(EXIT_USAGE, 'libpmem (PMDK) is required to write '
                          'device-DAX namespaces')
    lib.pmem_persist.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.pmem_persist.restype = None
    return lib.pmem_persist


def _prepare_pipe(fd):
    """Make the stream fd blocking, with a bigger pipe buffer if possible."""
    # A caller using green (eventlet) pipes hands over non-blocking fds.
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    # Bigger pipe buffers divide the syscalls per chunk; best effort.
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1024 * 1024)
    except OSError:
        pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, view):
    """Fill view from fd; return the number of bytes read (short at EOF)."""
    done = 0
    while done < len(view):
        n = os.readv(fd, [view[done:]])
        if n == 0:
            break
        done += n
    return done


def _is_zero(view, zero):
    """Tell whether a memoryview holds only zero bytes.

    bytes() compares at memcmp speed, unlike memoryview's element-wise
    comparison, and the cheap look at the first bytes skips the full copy
    for dense data.
    """
    if bytes(view[:64]) != zero[:min(64, len(view))]:
        return False
    return bytes(view) == zero[:len(view)]


# -- subcommands -------------------------------------------------------------

class _Record(object):
    """The record of an earlier pass, as send --with-record reads it.

    Read one chunk's entry at a time, so that its size never decides how
    much memory the helper takes.
    """

    def __init__(self, in_fd, digest, fast_digest):
        self.in_fd = in_fd
        self.digest = digest
        # Cheap to tell a chunk that changed; '' if not available here.
        self.fast_digest = fast_digest
        self.entry = bytearray(2 * stream.DIGEST_SIZE)
        self.truncated = False

    def next_chunk(self):
        """Return the next chunk's (digest, fast digest), or None.

        None for a chunk the record has no digest for, and for every chunk
        after the record ends early: those chunks are sent as DATA.
        """
        if self.truncated:
            return None
        if _read_exact(self.in_fd, memoryview(self.entry)) < len(self.entry):
            sys.stderr.write('nova-vpmem-copy send: the record on stdin '
                             'ended early, sending the other chunks\n')
            self.truncated = True
            return None
        digest = bytes(self.entry[:stream.DIGEST_SIZE])
        if digest == stream.NO_DIGEST:
            return None
        return digest, bytes(self.entry[stream.DIGEST_SIZE:])


def _read_record(in_fd, offset, length, chunk):
    """Read the header of an earlier pass's record.

    :returns: a _Record to read the chunks' entries from, or None when in
        doubt, and so every chunk is sent: a record for another range or
        chunk size, with a digest that is not cryptographic or not
        available here, or a truncated header.
    """
    head = bytearray(len(stream.RECORD_MAGIC) + stream.STREAM_HDR.size)
    if (_read_exact(in_fd, memoryview(head)) == len(head) and
            head.startswith(stream.RECORD_MAGIC)):
        name, fast, r_offset, r_length, r_chunk = (
            stream.STREAM_HDR.unpack_from(head, len(stream.RECORD_MAGIC)))
        digest = name.rstrip(b'\0').decode('ascii', 'replace')
        fast = fast.rstrip(b'\0').decode('ascii', 'replace')
        if ((r_offset, r_length, r_chunk) == (offset, length, chunk) and
                digest in stream.CRYPTO_DIGESTS and
                digest in available_digests()):
            return _Record(in_fd, digest,
                           fast if fast in available_digests() else '')
    sys.stderr.write('nova-vpmem-copy send: the record on stdin does not '
                     'fit this range, sending every chunk\n')
    return None


def _send_chunk(out_fd, pos, view, zero, digest, record, recorded):
    if _is_zero(view, zero):
        _write_all(out_fd, stream.RECORD_HDR.pack(stream.ZERO, pos,
                                                  len(view), b''))
        return
    data_digest = None
    if recorded:
        changed = False
        if record.fast_digest:
            # A cheap digest that differs proves a change; one that matches
            # proves nothing, as the guest may craft it.
            fast = _digest(record.fast_digest, view)
            changed = fast != recorded[1]
            if record.fast_digest == digest:
                data_digest = fast
        if not changed:
            chunk_digest = _digest(record.digest, view)
            if chunk_digest == recorded[0]:
                # The destination holds it already; it checks that it does.
                _write_all(out_fd, stream.RECORD_HDR.pack(
                    stream.SAME, pos, len(view), chunk_digest))
                return
    if data_digest is None:
        data_digest = _digest(digest, view)
    _write_all(out_fd, stream.RECORD_HDR.pack(stream.DATA, pos, len(view),
                                              data_digest))
    _write_all(out_fd, view)


def send(name, offset, length, chunk, digest, rate, out_fd=1, live=False,
         record_fd=None, stop_after=0):
    """Send a range of a namespace as a framed stream.

    :param live: the range may be in use by a running guest: read it anyway
        (this is the only call that may), through a private copy of each
        chunk so that its digest matches the bytes sent.
    :param record_fd: read the record of an earlier pass from this fd; its
        own digest checks the unchanged chunks, ``digest`` the others.
    :param stop_after: end the stream early, at a chunk boundary, after this
        many seconds (0: never); only a ``--precopy`` receiver accepts that.
    """
    device, ns, length = _check_namespace(name, offset, length, 'read')
    record = (_read_record(record_fd, offset, length, chunk)
              if record_fd is not None else None)
    _prepare_pipe(out_fd)
    dev = _Mapping(device, offset, length, ns['align'], writable=False,
                   allow_in_use=live)
    zero = bytes(chunk)
    snapshot = memoryview(bytearray(chunk)) if live else None
    records = 0
    start = time.monotonic()
    try:
        _write_all(out_fd, stream.MAGIC + stream.STREAM_HDR.pack(
            digest.encode(), record.digest.encode() if record else b'',
            offset, length, chunk))
        for pos in range(0, length, chunk):
            if stop_after and time.monotonic() - start > stop_after:
                break
            recorded = record.next_chunk() if record else None
            with dev.view[pos:pos + chunk] as view:
                if snapshot is not None:
                    # The guest may write to the chunk while it is sent.
                    snapshot[:len(view)] = view
                    view = snapshot[:len(view)]
                _send_chunk(out_fd, pos, view, zero, digest, record,
                            recorded)
            records += 1
            if rate:
                ahead = min(pos + chunk, length) / rate - (
                    time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        _write_all(out_fd, stream.RECORD_HDR.pack(
            stream.END, min(records * chunk, length), records, b''))
    finally:
        dev.close()


def _print_record(out, pos, view, digest):
    """Print a landed chunk's digests for a first pass's record.

    With the fast digest too, the second pass can tell most changed chunks
    without the cryptographic digest.
    """
    fast = best_digest()
    fast_hex = ('%s %s' % (fast, _digest_function(fast)(view).hex())
                if fast not in stream.CRYPTO_DIGESTS else '')
    out.write('chunk %d %d %s %s\n' % (pos, len(view), digest.hex(),
                                       fast_hex))


def receive(name, offset, length, in_fd=0, out=None, source_offset=None,
            precopy=False):
    """Write a framed stream into a range of a namespace.

    :param precopy: this is the first pass of a pre-copy: print ``chunk POS
        LEN DIGEST [FAST-NAME FAST-DIGEST]`` for every DATA chunk that landed
        (the pass's record), and accept a stream that ends before the end
        of the range.
    """
    out = out or sys.stdout
    if source_offset is None:
        source_offset = offset
    device, ns, length = _check_namespace(name, offset, length, 'write')
    _prepare_pipe(in_fd)
    hdr = bytearray(len(stream.MAGIC) + stream.STREAM_HDR.size)
    if _read_exact(in_fd, memoryview(hdr)) < len(hdr):
        raise HelperError(EXIT_TRUNCATED, 'stream truncated before its header')
    if hdr[:len(stream.MAGIC)] != stream.MAGIC:
        raise HelperError(EXIT_PROTOCOL, 'not a nova-vpmem-copy stream')
    digest_name, same_name, s_offset, s_length, chunk = (
        stream.STREAM_HDR.unpack_from(hdr, len(stream.MAGIC)))
    digest = digest_name.rstrip(b'\0').decode('ascii', 'replace')
    same_digest = same_name.rstrip(b'\0').decode('ascii', 'replace')
    if (s_offset, s_length) != (source_offset, length):
        raise HelperError(EXIT_PROTOCOL, 'stream carries range %d+%d, '
                          'expected %d+%d' % (s_offset, s_length,
                                              source_offset, length))
    for used in (digest, same_digest):
        if used not in ('none', '') and used not in available_digests():
            raise HelperError(EXIT_PROTOCOL, 'digest %s is not available on '
                              'this host' % used)
    if not stream.MIN_CHUNK <= chunk <= stream.MAX_CHUNK:
        raise HelperError(EXIT_PROTOCOL, 'bad chunk size %d' % chunk)
    if precopy and digest not in stream.CRYPTO_DIGESTS:
        raise HelperError(EXIT_PROTOCOL, 'a first pass needs a '
                          'cryptographic digest, not %s' % digest)

    dev = _Mapping(device, offset, length, ns['align'], writable=True)
    zero = bytes(chunk)
    stats = {'namespace': name, 'offset': offset, 'length': length,
             'digest': digest, 'same_digest': same_digest,
             'data_bytes': 0, 'zero_bytes': 0,
             'zero_filled_bytes': 0, 'same_bytes': 0, 'stale': []}
    pos = records = 0
    next_progress = PROGRESS_EVERY
    progress_due = time.monotonic() + PROGRESS_SECONDS
    rec = bytearray(stream.RECORD_HDR.size)
    try:
        while True:
            if _read_exact(in_fd, memoryview(rec)) < len(rec):
                raise HelperError(EXIT_TRUNCATED, 'stream truncated at byte '
                                  '%d of %d (no END record)' % (pos, length))
            kind, r_off, r_len, r_digest = stream.RECORD_HDR.unpack(rec)
            if kind == stream.END:
                if precopy and r_off < length:
                    length = stats['length'] = pos
                if (r_off, r_len) != (length, records) or pos != length:
                    raise HelperError(EXIT_PROTOCOL, 'END record says %d '
                                      'bytes in %d chunks, received %d bytes '
                                      'in %d chunks' % (r_off, r_len, pos,
                                                        records))
                break
            if (kind not in (stream.DATA, stream.ZERO, stream.SAME) or
                    r_off != pos or not 0 < r_len <= chunk or
                    pos + r_len > length):
                raise HelperError(EXIT_PROTOCOL, 'unexpected record kind %d '
                                  'at %d+%d, expected offset %d' % (
                                      kind, r_off, r_len, pos))
            with dev.view[pos:pos + r_len] as view:
                if kind == stream.DATA:
                    if _read_exact(in_fd, view) < r_len:
                        raise HelperError(EXIT_TRUNCATED, 'stream truncated '
                                          'inside the chunk at byte %d' % pos)
                    # Hash what landed in the destination, not the buffer
                    # it came from.
                    if (digest != 'none' and
                            _digest(digest, view) != r_digest):
                        raise HelperError(EXIT_MISMATCH, 'chunk at byte %d '
                                          'does not match its digest' %
                                          (offset + pos))
                    stats['data_bytes'] += r_len
                    if precopy:
                        _print_record(out, pos, view, r_digest)
                elif kind == stream.SAME:
                    if same_digest not in stream.CRYPTO_DIGESTS:
                        raise HelperError(EXIT_PROTOCOL, 'SAME record in a '
                                          'stream without a cryptographic '
                                          'digest for it')
                    # A stale record: the caller sends the chunk again.
                    if _digest(same_digest, view) != r_digest:
                        stats['stale'].append([pos, r_len])
                    stats['same_bytes'] += r_len
                else:
                    # The destination is not trusted to be zero already.
                    if not _is_zero(view, zero):
                        view[:] = zero[:r_len]
                        stats['zero_filled_bytes'] += r_len
                    stats['zero_bytes'] += r_len
            pos += r_len
            records += 1
            if pos >= next_progress or time.monotonic() >= progress_due:
                out.write('progress %d\n' % pos)
                out.flush()
                next_progress = pos + PROGRESS_EVERY
                progress_due = time.monotonic() + PROGRESS_SECONDS
        dev.persist()
    finally:
        dev.close()
    out.write('done %s\n' % json.dumps(stats, sort_keys=True))  # noqa: N324
    out.flush()


def zero(name, out=None, offset=0, length=None):
    out = out or sys.stdout
    device, ns, length = _check_namespace(name, offset, length, 'zero')
    dev = _Mapping(device, offset, length, ns['align'], writable=True,
                   stop_helpers=True)
    chunk = stream.DEFAULT_CHUNK
    zeroes = bytes(chunk)
    filled = 0
    try:
        for pos in range(0, length, chunk):
            with dev.view[pos:pos + chunk] as view:
                if not _is_zero(view, zeroes):
                    view[:] = zeroes[:len(view)]
                    filled += len(view)
        dev.persist()
    finally:
        dev.close()
    out.write('done %s\n' % json.dumps(  # noqa: N324
        {'namespace': name, 'offset': offset, 'length': length,
         'zero_filled_bytes': filled}))
    out.flush()


def check(names, lengths, out=None, sources=False):
    """Check namespaces for a copy, as its senders or receivers will.

    :param sources: the namespaces are the copy's sources, which the
        instance's guest may still map
    """
    out = out or sys.stdout
    if len(names) != len(lengths):
        raise HelperError(EXIT_USAGE, 'give one --length per --namespace')
    for name, length in zip(names, lengths):
        device, _ns, length = _check_namespace(
            name, 0, length, 'read' if sources else 'write')
        fd = os.open(device, os.O_RDONLY if sources else os.O_RDWR)
        try:
            if not sources:
                if not _lock(fd, True, 0, length):
                    raise HelperError(EXIT_DENIED, '%s is locked by another '
                                      'nova-vpmem-copy' % device)
                _refuse_users(fd, device)
        finally:
            os.close(fd)
    out.write('%s\n' % json.dumps(  # noqa: N324
        {'protocol': stream.PROTOCOL, 'digests': available_digests()}))
    out.flush()


# What the copy's own ssh identity may run on the other host, through the
# ssh-gate forced command: write, zero and check a namespace; never read
# one, never beside a running guest.
GATE_COMMANDS = ('receive', 'zero', 'check')


def gate_argv(command, runner):
    """The argv that runs what an ssh client asked for, or refuse it.

    :param command: the client's command (``SSH_ORIGINAL_COMMAND``)
    :param runner: argv prefix that runs this helper as root
    """
    words = shlex.split(command or '')
    # The client's own root helper and helper come first: the gate's
    # runner replaces them.
    start = next((i for i, word in enumerate(words)
                  if word in GATE_COMMANDS or word == 'send' or
                  word.startswith(('--config-', '--instance'))), None)
    parsed = None
    if start is not None:
        try:
            parsed = _parser().parse_args(words[start:])
        except SystemExit:
            raise HelperError(EXIT_USAGE, 'invalid arguments in %r' %
                              command)
    if (parsed is None or parsed.command not in GATE_COMMANDS or
            getattr(parsed, 'sources', False)):
        raise HelperError(EXIT_DENIED, 'this key only runs nova-vpmem-copy '
                          '%s, not %r' % ('/'.join(GATE_COMMANDS), command))
    return list(runner) + words[start:]


def _is_uuid(value):
    try:
        return str(uuid.UUID(value)) == value
    except (TypeError, ValueError):
        return False


def _parser():
    parser = argparse.ArgumentParser(
        prog='nova-vpmem-copy',
        description='Copy or zero vPMEM namespaces for nova-compute.')
    parser.add_argument('--config-file', action='append', default=[],
                        help="nova-compute's configuration file, for its "
                             '[libvirt] pmem_namespaces (repeatable; '
                             'default: %s)' % ', '.join(NOVA_CONFIG_FILES))
    parser.add_argument('--config-dir', action='append', default=[],
                        help="nova-compute's configuration directory "
                             '(repeatable; default: %s)' % NOVA_CONFIG_DIR)
    parser.add_argument('--instance',
                        help='UUID of the instance to act for: only the '
                             'namespaces that nova-compute recorded as its '
                             'are touched')
    sub = parser.add_subparsers(dest='command', required=True)
    for name in ('send', 'receive'):
        cmd = sub.add_parser(name)
        cmd.add_argument('--namespace', required=True)
        cmd.add_argument('--offset', type=int, default=0)
        cmd.add_argument('--length', type=int, required=True)
    sub.choices['receive'].add_argument(
        '--source-offset', type=int,
        help='offset the stream was read from (default: --offset)')
    sub.choices['receive'].add_argument(
        '--precopy', action='store_true',
        help='first pass of a pre-copy: print the digest of every DATA '
             'chunk that landed, accept a stream that ends early')
    send_cmd = sub.choices['send']
    send_cmd.add_argument('--chunk-size', type=int,
                          default=stream.DEFAULT_CHUNK)
    send_cmd.add_argument('--digest', default=best_digest(),
                          choices=available_digests() + ['none'])
    send_cmd.add_argument('--rate', type=int, default=0,
                          help='bytes per second, 0 for no limit')
    send_cmd.add_argument('--live', action='store_true',
                          help='read the range even though a running guest '
                               'maps it')
    send_cmd.add_argument('--with-record', action='store_true',
                          help='read the record of an earlier pass from '
                               'stdin and send unchanged chunks as SAME')
    send_cmd.add_argument('--stop-after', type=float, default=0,
                          help='end the stream early after this many '
                               'seconds (for a --precopy receiver)')
    zero_cmd = sub.add_parser('zero')
    zero_cmd.add_argument('--namespace', required=True)
    zero_cmd.add_argument('--offset', type=int, default=0)
    zero_cmd.add_argument('--length', type=int,
                          help='bytes to zero (default: to the end)')
    check_cmd = sub.add_parser('check')
    check_cmd.add_argument('--namespace', action='append', default=[])
    check_cmd.add_argument('--length', type=int, action='append', default=[])
    check_cmd.add_argument('--sources', action='store_true',
                           help="the copy's sources, which the instance's "
                                'guest may still map')
    gate_cmd = sub.add_parser(
        'ssh-gate', help='the forced command of the copy\'s ssh key: run '
        'the client\'s receive, zero or check with RUNNER, refuse the rest')
    gate_cmd.add_argument('runner', nargs=argparse.REMAINDER,
                          help='the command that runs this helper as root')
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    os.environ['PATH'] = SAFE_PATH
    _config.update(files=args.config_file, directories=args.config_dir,
                   instance=args.instance)
    _run.clear()
    try:
        if args.command != 'ssh-gate' and not _is_uuid(args.instance):
            raise HelperError(EXIT_USAGE, '--instance must be the UUID of '
                              'the instance to act for, not %r' %
                              args.instance)
        if args.command == 'ssh-gate':
            if not args.runner:
                raise HelperError(EXIT_USAGE, 'ssh-gate needs the command '
                                  'that runs nova-vpmem-copy as root')
            argv = gate_argv(os.environ.get('SSH_ORIGINAL_COMMAND'),
                             args.runner)
            os.execvp(argv[0], argv)
        elif args.command == 'send':
            if not stream.MIN_CHUNK <= args.chunk_size <= stream.MAX_CHUNK:
                raise HelperError(EXIT_USAGE, 'the chunk size must be %d to '
                                  '%d bytes' % (stream.MIN_CHUNK,
                                                stream.MAX_CHUNK))
            send(args.namespace, args.offset, args.length, args.chunk_size,
                 args.digest, args.rate, live=args.live,
                 record_fd=0 if args.with_record else None,
                 stop_after=args.stop_after)
        elif args.command == 'receive':
            receive(args.namespace, args.offset, args.length,
                    source_offset=args.source_offset,
                    precopy=args.precopy)
        elif args.command == 'check':
            check(args.namespace, args.length, sources=args.sources)
        else:
            zero(args.namespace, offset=args.offset, length=args.length)
    except HelperError as e:
        sys.stderr.write('nova-vpmem-copy %s: %s\n' % (args.command, e))
        return e.code
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        sys.stderr.write('nova-vpmem-copy %s: %s\n' % (args.command, e))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
