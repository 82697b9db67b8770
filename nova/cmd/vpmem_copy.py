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
cold migration and resize (``nova.virt.libvirt.vpmem_copy``); nova-compute
runs it through ``sudo -n`` on its own host and, over ssh, on the other.
Every call acts for one instance and names namespaces, never devices. As
root, the helper only decides whether the call may use a range of a
namespace, opens its device and locks the range:

* the namespace must be in ``[libvirt] pmem_namespaces`` of nova's root-owned
  configuration files; ``ndctl list -X`` gives its device;
* this host's owners file (``nova.virt.libvirt.vpmem_owners``) must give it
  to the instance: ``send`` reads only the instance's namespaces,
  ``receive`` writes only those given to it for its move here, ``zero``
  zeroes only the instance's or already zeroed ones;
* the helper holds POSIX locks on the device for its whole run: a shared
  one on HELPER_MARK, which tells other helpers and nova's own zeroing that
  it runs, and one on its range, exclusive to write; ``zero`` stops the
  helpers whose locks are in its way;
* no other process may have the device open or mapped (compared by device
  number, and a process that cannot be inspected counts as a user), except
  a running guest for a pre-copy's first pass, which only reads.

Then it drops its privileges to the user that called it through sudo (or
``nobody``) and runs the stream code (``nova.virt.vpmem_stream``) on the
descriptor it opened: a stream can reach no other file. It runs as root
only as ``python3 -I -m nova.cmd.vpmem_copy``.
"""

import argparse
import configparser
import fcntl
import functools
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess  # nosec: B404 argv lists only, never a shell
import sys
import time
import uuid

from nova.virt import vpmem_stream as stream

# A byte past the end of any namespace: a process that holds a lock on it
# is a helper (a tenant cannot take it).
HELPER_MARK = 1 << 62
# Tries, 50 ms apart, before a process that uses the device without the
# mark counts as a user: a helper opens the device before it marks it.
MARK_TRIES = 20
# Seconds zero waits for other helpers to let go of the device.
HELPER_EXIT_WAIT = 30
# Seconds a helper stopped by zero gets between SIGTERM and SIGKILL.
HELPER_KILL_GRACE = 5
# Programs run as root come from these directories only.
SAFE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
# nova-compute's configuration, read for [libvirt] pmem_namespaces and the
# owners file's place. Later files win, as with oslo.config; --config-file
# and --config-dir (nova-compute's own) replace these defaults. They count
# only when this user owns them and nobody else may write them.
NOVA_CONFIG_FILES = ('/etc/nova/nova.conf', '/etc/nova/nova-compute.conf')
NOVA_CONFIG_DIR = '/etc/nova/nova.conf.d'
CONFIG_OWNER = 0
# What main() read from the command line, and the (uid, gid) to drop to
# once the device is open (None: a call from within a process).
_config: dict = {'files': (), 'directories': (), 'instance': None,
                'run_as': None}
# What this run has read (see _per_run).
_run: dict = {}
HelperError = stream.HelperError
DENIED = stream.EXIT_DENIED
USAGE = stream.EXIT_USAGE


# -- what a call may use -----------------------------------------------------

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
    give to guests.
    """
    allowed = _nova_namespace_names()
    ndctl = shutil.which('ndctl', path=SAFE_PATH)
    if not ndctl:
        raise HelperError(USAGE, 'ndctl is not installed in %s' % SAFE_PATH)
    out = subprocess.run(  # nosec: B603 fixed argv, absolute path
        [ndctl, 'list', '-X'], check=True, capture_output=True,
        timeout=60, env={'PATH': SAFE_PATH}).stdout
    namespaces = {}
    for ns in json.loads(out or b'[]'):  # noqa: N324
        region = ns.get('daxregion') or {}
        devices = region.get('devices') or []
        # Older ndctl releases print chardev and align at the top level.
        chardev = devices[0]['chardev'] if devices else ns.get('chardev')
        if ns.get('name') in allowed and chardev:
            namespaces[ns['name']] = {
                'path': '/dev/' + chardev, 'size': int(ns['size']),
                'align': int(region.get('align') or ns.get('align') or 4096)}
    return namespaces


def _config_paths():
    """[(path, whether it must exist)] of the files to read, in order."""
    def conf_d(path):
        return [(f, True) for f in sorted(glob.glob(path + '/*.conf'))]
    if not _config['files'] and not _config['directories']:
        return [(f, False) for f in NOVA_CONFIG_FILES] + conf_d(
            NOVA_CONFIG_DIR)
    return [(f, True) for f in _config['files']] + [
        entry for d in _config['directories'] for entry in conf_d(d)]


@_per_run
def _nova_config():
    """Read nova-compute's configuration files, root-owned ones only."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    for path, required in _config_paths():
        try:
            f = open(path, encoding='utf-8')
        except FileNotFoundError:
            if required:
                raise HelperError(USAGE, '%s does not exist' % path)
            continue
        with f:
            # Checked on the open file: the path may change under us.
            st = os.fstat(f.fileno())
            if st.st_uid != CONFIG_OWNER or st.st_mode & 0o022:
                raise HelperError(DENIED, '%s must be owned by uid %d and '
                                  'writable by it only: it names the '
                                  'namespaces that may be written as root'
                                  % (path, CONFIG_OWNER))
            parser.read_file(f, source=path)
    return parser


def _nova_namespace_names():
    """Return the namespace names in nova's [libvirt] pmem_namespaces."""
    value = _nova_config().get('libvirt', 'pmem_namespaces', fallback='')
    names: set[str] = set()
    for group in filter(None, value.split(',')):
        names.update(filter(None, group.partition(':')[2].split('|')))
    if not names:
        raise HelperError(DENIED, 'no [libvirt] pmem_namespaces in %s' %
                          ', '.join(p for p, _ in _config_paths()))
    return names


def _owners_path():
    """The owners file of nova-compute's [DEFAULT] state_path and host."""
    config = _nova_config()
    # nova's default state_path is where the nova package is installed.
    state_path = config.get('DEFAULT', 'state_path', fallback=None) or (
        os.path.dirname(os.path.dirname(os.path.dirname(stream.__file__))))
    host = config.get('DEFAULT', 'host', fallback=None) or socket.gethostname()
    if '$' in state_path + host:
        raise HelperError(USAGE, 'set [DEFAULT] state_path and host without '
                          '$ substitutions for nova-vpmem-copy')
    return os.path.join(state_path, stream.OWNERS_FILE % host)


@_per_run
def _owners():
    """Return (owners, incoming) of this host's owners file.

    nova-compute writes it: a namespace it has no record of is nobody's.
    """
    path = _owners_path()
    try:
        # O_NOFOLLOW: nova-compute never writes a symlink there.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}, {}
    except OSError as e:
        raise HelperError(DENIED, 'cannot read %s: %s' % (path, e))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HelperError(DENIED, '%s is not a regular file' % path)
        text = os.read(fd, stream.MAX_OWNERS_FILE_SIZE + 1)
    finally:
        os.close(fd)
    try:
        if len(text) > stream.MAX_OWNERS_FILE_SIZE:
            raise ValueError('larger than %d bytes' %
                             stream.MAX_OWNERS_FILE_SIZE)
        return stream.parse_owners(text)
    except ValueError as e:
        raise HelperError(DENIED, '%s is not an owners file: %s' % (path, e))


def _check_namespace(name, offset, length, use):
    """Return (namespace, length) of a range this run may use.

    :param use: 'read' a namespace this host records as the instance's,
        'write' one it gave to the instance moving here, or 'zero' one of
        the instance's or one recorded as zeroed
    """
    namespaces = known_namespaces()
    if name not in namespaces:
        raise HelperError(DENIED, '%s is not a vPMEM namespace of this host'
                          % name)
    instance = _config['instance']
    owners, incoming = _owners()
    if not {'read': owners.get(name) == instance,
            'write': incoming.get(name) == instance,
            'zero': owners.get(name) in (instance, stream.ZEROED)}[use]:
        raise HelperError(DENIED, 'this host did not give namespace %s to '
                          'instance %s%s (it records %s)' % (
                              name, instance,
                              ' for its move here' if use == 'write' else '',
                              owners.get(name, 'no owner')))
    ns = namespaces[name]
    if length is None:
        length = ns['size'] - offset
    if offset < 0 or length < 0 or offset + length > ns['size']:
        raise HelperError(USAGE, 'range %d+%d is outside %s (%d bytes)' % (
            offset, length, name, ns['size']))
    return ns, length


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
                raise HelperError(DENIED, 'cannot tell whether process %s '
                                  'uses the device: %s' % (pid, e))
        else:
            return None
        # A helper starting now opens the device before it marks it.
        time.sleep(0.05)
    return int(pid)


def _refuse_users(fd, device):
    user = _user_of(fd)
    if user:
        raise HelperError(DENIED, '%s is in use by process %s' % (
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
                raise HelperError(DENIED, 'the device is still locked by '
                                  'nova-vpmem-copy processes %s after %d '
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


# -- subcommands -------------------------------------------------------------

def _open(name, offset, length, use, in_use_ok=False):
    """Open and lock a range this run may use; return (fd, ns, length).

    :param use: see _check_namespace
    :param in_use_ok: a running guest may map the namespace (read only)
    """
    ns, length = _check_namespace(name, offset, length, use)
    writable = use != 'read'
    fd = os.open(ns['path'], os.O_RDWR if writable else os.O_RDONLY)
    try:
        if not _lock(fd, False, HELPER_MARK, 1):
            raise HelperError(DENIED, '%s is locked: nova is zeroing it' %
                              name)
        if use == 'zero':
            _stop_helpers(fd, offset, length)
        elif not _lock(fd, writable, offset, length):
            raise HelperError(DENIED, 'bytes %d+%d of %s are locked by '
                              'another nova-vpmem-copy' % (offset, length,
                                                           name))
        if not in_use_ok:
            _refuse_users(fd, ns['path'])
    except BaseException:
        os.close(fd)
        raise
    return fd, ns, length


def _map(name, offset, length, use, in_use_ok=False):
    """Map a range for this run's work, which runs without privileges."""
    fd, ns, length = _open(name, offset, length, use, in_use_ok)
    try:
        _drop_privileges()
        return stream.Mapping(fd, offset, length, ns['align'],
                              writable=use != 'read')
    except BaseException:
        os.close(fd)
        raise


def _caller():
    """The (uid, gid) that a run as root drops to, None if not root."""
    if os.geteuid() != 0:
        return None
    # sudo sets it to the user who ran it, whatever the environment.
    user = pwd.getpwnam('nobody')
    if os.environ.get('SUDO_UID', '0') != '0':
        user = pwd.getpwuid(int(os.environ['SUDO_UID']))
    return user.pw_uid, user.pw_gid


def _drop_privileges():
    if _config['run_as'] is None:
        return
    uid, gid = _config['run_as']
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def send(name, offset, length, chunk, digest, rate, out_fd=1, live=False,
         record_fd=None, stop_after=0):
    """Send a range of a namespace as a framed stream (see vpmem_stream).

    :param live: a running guest may map the range (a pre-copy's first
        pass); only send, which only reads, may do that
    :param record_fd: read the record of an earlier pass from this fd
    """
    dev = _map(name, offset, length, 'read', in_use_ok=live)
    try:
        record = None
        if record_fd is not None:
            record = stream.read_record(record_fd, offset, len(dev.view),
                                        chunk)
        stream.send(dev.view, offset, chunk, digest, out_fd, rate=rate,
                    live=live, record=record, stop_after=stop_after)
    finally:
        dev.close()


def receive(name, offset, length, in_fd=0, out=None, source_offset=None,
            precopy=False):
    """Write a framed stream into a range of a namespace.

    :param source_offset: the offset the stream was read from
    :param precopy: the first pass of a pre-copy (see vpmem_stream.receive)
    """
    out = out or sys.stdout
    dev = _map(name, offset, length, 'write')
    length = len(dev.view)
    try:
        header = stream.read_header(
            in_fd, offset if source_offset is None else source_offset,
            length, precopy)
        stats = {'namespace': name, 'offset': offset,
                 'length': length, 'digest': header[0],
                 'same_digest': header[1], 'data_bytes': 0,
                 'zero_bytes': 0, 'zero_filled_bytes': 0, 'same_bytes': 0,
                 'stale': []}
        stream.receive(dev, header, stats, in_fd, out, precopy)
    finally:
        dev.close()
    out.write('done %s\n' % json.dumps(stats, sort_keys=True))  # noqa: N324
    out.flush()


def zero(name, out=None, offset=0, length=None):
    out = out or sys.stdout
    dev = _map(name, offset, length, 'zero')
    length = len(dev.view)
    try:
        filled = stream.zero(dev)
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
        raise HelperError(USAGE, 'give one --length per --namespace')
    for name, length in zip(names, lengths):
        fd = _open(name, 0, length, 'read' if sources else 'write',
                   in_use_ok=sources)[0]
        os.close(fd)
    out.write('%s\n' % json.dumps(  # noqa: N324
        {'protocol': stream.PROTOCOL, 'digests': stream.available_digests()}))
    out.flush()


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
                        help="nova-compute's configuration file (repeatable;"
                             ' default: %s)' % ', '.join(NOVA_CONFIG_FILES))
    parser.add_argument('--config-dir', action='append', default=[],
                        help="nova-compute's configuration directory "
                             '(repeatable; default: %s)' % NOVA_CONFIG_DIR)
    parser.add_argument('--instance', help='UUID of the instance to act for')
    sub = parser.add_subparsers(dest='command', required=True)
    for name in ('send', 'receive', 'zero'):
        cmd = sub.add_parser(name)
        cmd.add_argument('--namespace', required=True)
        cmd.add_argument('--offset', type=int, default=0)
        cmd.add_argument('--length', type=int, required=name != 'zero')
    receive_cmd = sub.choices['receive']
    receive_cmd.add_argument('--source-offset', type=int,
                             help='offset the stream was read from')
    receive_cmd.add_argument('--precopy', action='store_true',
                             help="a pre-copy's first pass: print its record")
    send_cmd = sub.choices['send']
    send_cmd.add_argument('--chunk-size', type=int,
                          default=stream.DEFAULT_CHUNK)
    send_cmd.add_argument('--digest', default=stream.best_digest(),
                          choices=stream.available_digests() + ['none'])
    send_cmd.add_argument('--rate', type=int, default=0,
                          help='bytes per second, 0 for no limit')
    send_cmd.add_argument('--live', action='store_true',
                          help='a running guest may map the range')
    send_cmd.add_argument('--with-record', action='store_true',
                          help="read an earlier pass's record from stdin")
    send_cmd.add_argument('--stop-after', type=float, default=0,
                          help='end the stream after this many seconds')
    check_cmd = sub.add_parser('check')
    check_cmd.add_argument('--namespace', action='append', default=[])
    check_cmd.add_argument('--length', type=int, action='append', default=[])
    check_cmd.add_argument('--sources', action='store_true',
                           help="the copy's sources, which a guest may map")
    return parser


def _run_command(args):
    if not _is_uuid(args.instance):
        raise HelperError(USAGE, '--instance must be the UUID of the '
                          'instance to act for, not %r' % args.instance)
    if args.command == 'send':
        if not stream.MIN_CHUNK <= args.chunk_size <= stream.MAX_CHUNK:
            raise HelperError(USAGE, 'the chunk size must be %d to %d '
                              'bytes' % (stream.MIN_CHUNK, stream.MAX_CHUNK))
        send(args.namespace, args.offset, args.length, args.chunk_size,
             args.digest, args.rate, live=args.live,
             record_fd=0 if args.with_record else None,
             stop_after=args.stop_after)
    elif args.command == 'receive':
        receive(args.namespace, args.offset, args.length,
                source_offset=args.source_offset, precopy=args.precopy)
    elif args.command == 'check':
        check(args.namespace, args.length, sources=args.sources)
    else:
        zero(args.namespace, offset=args.offset, length=args.length)


def main(argv=None):
    """Run the helper as a program (no argv), or from within a process.

    A call with argv from within a process keeps the process' privileges.
    """
    if argv is None and os.geteuid() == 0 and not sys.flags.isolated:
        # Python reads the environment, the user's site-packages and the
        # current directory before any code of ours runs: only the
        # interpreter's -I keeps them from root.
        sys.stderr.write('nova-vpmem-copy: run it as root only as "python3 '
                         '-I -m nova.cmd.vpmem_copy"\n')
        return USAGE
    args = _parser().parse_args(argv)
    os.environ['PATH'] = SAFE_PATH
    _config.update(files=args.config_file, directories=args.config_dir,
                   instance=args.instance,
                   run_as=_caller() if argv is None else None)
    _run.clear()
    try:
        _run_command(args)
    except HelperError as e:
        sys.stderr.write('nova-vpmem-copy %s: %s\n' % (args.command, e))
        return e.code
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        sys.stderr.write('nova-vpmem-copy %s: %s\n' % (args.command, e))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
