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

"""Copy vPMEM namespaces to another host for cold migration and resize.

The driver checks both hosts with :func:`check_namespaces`, then copies
with :func:`copy_namespaces`, optionally after a first pass with
:func:`precopy_namespaces` while the guest still runs. They take plain
values (namespace names, sizes, the instance, a host name and options)
and run, for each aligned byte range of each namespace, the pipeline::

    sudo -n nova-vpmem-copy --instance UUID send --namespace SRC \\
            --offset O --length L |
        ssh -c aes128-gcm@openssh.com HOST \\
            sudo -n nova-vpmem-copy --instance UUID receive --namespace DST \\
                --offset O --length L

or the same without ssh when source and destination are the same host.
Each host's helper finds the device of a namespace name itself, and
touches only the namespaces its host recorded as the instance's
(``nova.virt.libvirt.vpmem_owners``). The root helper
(``nova.cmd.vpmem_copy``) checks as root what a call may touch and opens
it, then reads, writes and verifies the stream without privileges
(``nova.virt.vpmem_stream``); this module runs as the nova user, builds
every command as an argv list, and quotes the remote command for ssh.

The framed stream of the helper is used rather than plain daxio because
daxio exits 0 on a short input stream (a dropped ssh connection or a SIGBUS
on the source leaves a silently truncated destination), sends zero extents
over the wire and has no end-to-end check (``tools/bench_vpmem_copy.py``
measures against that pipeline).
"""

import collections
import os
import re
import selectors
import shlex
import subprocess  # nosec: B404 argv lists only, never a shell
import tempfile
import time
import typing as ty

from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import excutils

from nova import exception
from nova.i18n import _
from nova.virt import vpmem_stream

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# Client settings that no ssh_config may change for a copy: it goes
# straight to the destination in a connection of its own (no proxy, no
# shared master connection), host keys are not taken from DNS or updated,
# nothing is forwarded, and nothing runs on this host or instead of the
# helper on the destination.
_SSH_PINNED = [
    'ControlMaster=no', 'ControlPath=none', 'ProxyCommand=none',
    'ProxyJump=none', 'CanonicalizeHostname=no', 'VerifyHostKeyDNS=no',
    'UpdateHostKeys=no', 'ForwardAgent=no', 'ForwardX11=no',
    'ClearAllForwardings=yes', 'PermitLocalCommand=no', 'RemoteCommand=none',
    'RequestTTY=no']
# Bounds on the receiver's output, which a source does not trust: a line
# of up to _LINE_SIZE bytes, plus _LINE_SIZE_PER_CHUNK for each chunk of
# the range (its "done" line may list each chunk as stale).
_LINE_SIZE = 64 * 1024
_LINE_SIZE_PER_CHUNK = 48
DEFAULT_CIPHER = 'aes128-gcm@openssh.com'
STDERR_TAIL = 400
# The stream protocol of the helper that this module speaks.
PROTOCOL = vpmem_stream.PROTOCOL
# The digests a pre-copy's record may use.
CRYPTO_DIGESTS = vpmem_stream.CRYPTO_DIGESTS
# A destination that does not answer fails the copy in bounded time: ssh
# gives up connecting after CONNECT_TIMEOUT seconds, and an established
# connection after SERVER_ALIVE_INTERVAL * SERVER_ALIVE_COUNT seconds of
# silence.
CONNECT_TIMEOUT = 10
SERVER_ALIVE_INTERVAL = 5
SERVER_ALIVE_COUNT = 3
# Seconds a helper gets to exit after SIGTERM (which sudo relays to it, unlike
# SIGKILL) before it is killed.
KILL_GRACE = 5

# What may appear in a host name (including IPv6 literals), a namespace
# name and a file path that is passed to the remote side or ssh. Everything
# is quoted anyway; this refuses option-like and surprising values early.
_HOST_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._:%-]*$')
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]*$')
_PATH_RE = re.compile(r'^/[A-Za-z0-9._/+-]+$')
# The helper takes an instance UUID in its canonical form only.
_UUID_RE = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
                      r'[0-9a-f]{12}')
_CIPHER_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9.@_+-]*$')


class NamespacePair(collections.namedtuple(
        'NamespacePair', ['source', 'dest', 'size', 'dest_size',
                          'label_size'], defaults=(None, 0))):
    """Copy namespace ``source`` (``size`` bytes) to namespace ``dest``.

    Both are namespace names (``[libvirt] pmem_namespaces``) on their host.

    The guest sees each namespace as an NVDIMM whose last ``label_size``
    bytes are its label area (QEMU keeps the labels at the end of the
    backend). On a larger destination (``dest_size``) the data area lands
    at the start, the label area at the end, and the range between is
    zeroed, so that the guest finds its own NVDIMM and nothing else.
    """

    def segments(self):
        """Return [(source offset, dest offset, length)] to copy."""
        data = self.size - self.label_size
        dest_size = self.dest_size or self.size
        if dest_size == self.size or not self.label_size:
            return [(0, 0, self.size)]
        return [(0, 0, data),
                (data, dest_size - self.label_size, self.label_size)]

    def gap(self):
        """Return (dest offset, length) of the range to zero, or None."""
        extra = (self.dest_size or self.size) - self.size
        return (self.size - self.label_size, extra) if extra else None


class Record(object):
    """What the first pass of a pre-copy left on the destination.

    The digests of each DATA chunk that landed, as the destination's helper
    reported them after checking the chunk: the cryptographic ``digest``,
    and ``fast_digest`` (if the destination has one) with which the second
    pass tells most changed chunks cheaply. A chunk is known by its pair,
    its source and destination offsets and its length, so a chunk that a
    later pass splits otherwise has no record, and is sent.
    """

    def __init__(self, digest, chunk_size):
        self.digest = digest
        self.chunk_size = chunk_size
        self.fast_digest: ty.Optional[str] = None
        self.chunks: dict[tuple, tuple[bytes, bytes]] = {}

    @staticmethod
    def _key(stream, pos, length):
        return (stream.pair.source, stream.pair.dest, stream.offset + pos,
                stream.dest_offset + pos, length)

    def add(self, stream, pos, length, digest, fast_digest=None,
            fast=b''):
        if self.fast_digest is None:
            self.fast_digest = fast_digest or ''
        if fast_digest != self.fast_digest:
            fast = b''
        self.chunks[self._key(stream, pos, length)] = (digest, fast)

    def recorded_bytes(self):
        return sum(key[-1] for key in self.chunks)

    def for_stream(self, stream):
        """The record input of the stream's sender (send --with-record)."""
        size = vpmem_stream.DIGEST_SIZE
        parts = [vpmem_stream.RECORD_MAGIC, vpmem_stream.STREAM_HDR.pack(
            self.digest.encode(), (self.fast_digest or '').encode(),
            stream.offset, stream.length, self.chunk_size)]
        for pos in range(0, stream.length, self.chunk_size):
            length = min(self.chunk_size, stream.length - pos)
            digest, fast = self.chunks.get(self._key(stream, pos, length),
                                           (bytes(size), b''))
            parts += [digest, fast.ljust(size, b'\0')]
        return b''.join(parts)


def _check_host(host):
    if not _HOST_RE.fullmatch(host):
        raise ValueError(_('Invalid host name %r') % host)
    return host


def _check_path(path):
    if (not _PATH_RE.fullmatch(path) or os.path.normpath(path) != path):
        raise ValueError(_('Invalid path %r') % path)
    return path


def _check_name(name):
    if not _NAME_RE.fullmatch(name):
        raise ValueError(_('Invalid namespace name %r') % name)
    return name


def _check_pair(pair):
    _check_name(pair.source)
    _check_name(pair.dest)
    if pair.size <= 0 or not 0 <= pair.label_size < pair.size:
        raise ValueError(_('Invalid size %(size)r or label size %(label)r') %
                         {'size': pair.size, 'label': pair.label_size})
    if pair.dest_size is not None and pair.dest_size < pair.size:
        raise ValueError(_('Destination size %(dest)r is smaller than '
                           '%(size)r') % {'dest': pair.dest_size,
                                          'size': pair.size})


def _split(size, streams, chunk_size):
    """Split [0, size) into at most ``streams`` chunk-aligned ranges."""
    per = -(-size // streams)
    per = max(chunk_size, -(-per // chunk_size) * chunk_size)
    return [(off, min(per, size - off)) for off in range(0, size, per)]


def _tail(stream):
    stream.seek(0)
    text = stream.read().decode('utf-8', 'replace').strip()
    return text[-STDERR_TAIL:]


class _Transport(object):
    """Builds the argv of helper calls, locally or on a host over ssh."""

    def __init__(self, host, helper, root_helper, cipher, ssh_args,
                 known_hosts, instance):
        self.host = _check_host(host) if host else None
        if not isinstance(instance, str) or not _UUID_RE.fullmatch(instance):
            raise ValueError(_('Invalid instance UUID %r') % instance)
        # Every helper call acts for the instance, on its namespaces only.
        self.helper = list(root_helper) + list(helper) + [
            '--instance', instance]
        if not _CIPHER_RE.fullmatch(cipher):
            raise ValueError(_('Invalid ssh cipher %r') % cipher)
        self.cipher = cipher
        # The first value ssh obtains for an option wins, so these beat any
        # ssh_config: host keys are always checked, and an unknown or changed
        # key fails instead of prompting or connecting anyway.
        self.ssh_options = [
            'BatchMode=yes', 'StrictHostKeyChecking=yes', 'Compression=no',
            'ConnectTimeout=%d' % CONNECT_TIMEOUT,
            'ServerAliveInterval=%d' % SERVER_ALIVE_INTERVAL,
            'ServerAliveCountMax=%d' % SERVER_ALIVE_COUNT] + _SSH_PINNED
        if known_hosts:
            self.ssh_options += [
                'UserKnownHostsFile=%s' % _check_path(known_hosts),
                'GlobalKnownHostsFile=/dev/null']
        self.ssh_args = list(ssh_args)

    def local(self, *args):
        return self.helper + [str(a) for a in args]

    def remote(self, *args):
        if not self.host:
            return self.local(*args)
        # ssh joins its arguments into one string for the remote shell, so
        # each one is quoted.
        command = ' '.join(shlex.quote(a) for a in self.local(*args))
        options = []
        for option in self.ssh_options:
            options += ['-o', option]
        return (['ssh', '-T'] + options + ['-c', self.cipher] +
                self.ssh_args + ['--', self.host, command])


class _Stream(object):
    """One ``send | [ssh] receive`` pipeline for a range of a namespace."""

    def __init__(self, pair, offset, dest_offset, length):
        self.pair = pair
        self.offset = offset
        self.dest_offset = dest_offset
        self.length = length
        # The first pass of a pre-copy fills a Record, the second sends
        # one; see _CopyRun.
        self.recording: ty.Optional[Record] = None
        self.sender: ty.Optional[subprocess.Popen] = None
        self.receiver: ty.Optional[subprocess.Popen] = None
        # The sender's end of the pipe into the receiver, until it starts.
        self.write_fd: ty.Optional[int] = None
        self.errs: list[ty.IO[bytes]] = []
        self.buf = b''
        # The longest line the receiver may print, set by start().
        self.max_line = 0
        self.done = 0
        self.stats: dict[str, ty.Any] = {}
        self.error: ty.Optional[str] = None
        # Set by start() and when the stream ends.
        self.started = self.ended = 0.0

    def start_receiver(self, transport, precopy, on_execute):
        """Start the receiving end, which waits for the sender's stream.

        Started ahead, before the guest is powered off, it takes the ssh
        connection and the remote helper's start out of the downtime.

        :param precopy: the stream is the first pass of a pre-copy
        """
        recv = transport.remote(
            'receive', '--namespace', self.pair.dest, '--offset',
            self.dest_offset, '--length', self.length,
            *([] if self.dest_offset == self.offset else
              ['--source-offset', self.offset]),
            *(['--precopy'] if precopy else []))
        self.errs = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
        read_fd, self.write_fd = os.pipe()
        try:
            self.receiver = subprocess.Popen(  # nosec: B603 argv list
                recv, stdin=read_fd, stdout=subprocess.PIPE,
                stderr=self.errs[1])
        except Exception:
            os.close(self.write_fd)
            self.write_fd = None
            raise
        finally:
            os.close(read_fd)
        if on_execute:
            on_execute(self.receiver)

    def start(self, transport, digest, rate, chunk_size, on_execute,
              record=None, stop_after=None):
        """Start the pipeline; return the receiver's stdout.

        :param record: a Record to send unchanged chunks against (the
            second pass of a pre-copy)
        :param stop_after: seconds after which the sender ends the stream
            early (the first pass of a pre-copy, which self.recording
            records); None when the stream must cover its whole range
        """
        if self.receiver is None:
            self.start_receiver(transport, stop_after is not None,
                                on_execute)
        receiver = ty.cast(subprocess.Popen, self.receiver)
        write_fd = ty.cast(int, self.write_fd)
        options = []
        if record is not None:
            options.append('--with-record')
        if stop_after is not None:
            options += ['--live', '--stop-after', '%.3f' % stop_after]
        send = transport.local(
            'send', '--namespace', self.pair.source, '--offset', self.offset,
            '--length', self.length, '--chunk-size', chunk_size,
            '--rate', rate, *(['--digest', digest] if digest else []),
            *options)
        stdin: ty.Any = subprocess.DEVNULL
        if record is not None:
            stdin = tempfile.TemporaryFile()
            stdin.write(record.for_stream(self))
            stdin.seek(0)
        # Its last line lists at most every chunk as stale.
        self.max_line = _LINE_SIZE + _LINE_SIZE_PER_CHUNK * -(
            -self.length // chunk_size)
        self.started = time.monotonic()
        try:
            self.sender = subprocess.Popen(  # nosec: B603 argv list
                send, stdin=stdin, stdout=write_fd, stderr=self.errs[0])
        finally:
            if record is not None:
                stdin.close()
            # The sender holds its own copy; ours would keep the pipe open
            # after the sender dies, and the receiver waiting.
            os.close(write_fd)
            self.write_fd = None
        if on_execute:
            on_execute(self.sender)
        return receiver.stdout

    def feed(self, data):
        """Parse the receiver's output; return the bytes newly copied.

        Output that no receiver prints (a line too long, a chunk outside
        the range) sets ``error``: the destination is not trusted.
        """
        self.buf += data
        *lines, self.buf = self.buf.split(b'\n')
        if len(self.buf) > self.max_line:
            self.error = _('receive printed a line of more than %d bytes') % (
                self.max_line)
            self.buf = b''
        before = self.done
        for line in lines:
            word, _sep, rest = line.decode('utf-8', 'replace').partition(' ')
            if word == 'chunk' and self.recording:
                pos_text, length_text, digest, *fast = rest.split()
                pos, length = int(pos_text), int(length_text)
                if not (0 <= pos < self.length and
                        0 < length <= self.recording.chunk_size and
                        pos % self.recording.chunk_size == 0):
                    self.error = _('receive reported chunk %(pos)d+%(len)d '
                                   'outside its range') % {'pos': pos,
                                                           'len': length}
                    break
                self.recording.add(
                    self, pos, length, bytes.fromhex(digest),
                    *([fast[0], bytes.fromhex(fast[1])] if fast else []))
            elif word == 'progress':
                self.done = int(rest)
            elif word == 'done':
                self.stats = jsonutils.loads(rest)
                self.done = self.stats.get('length', self.length)
        return self.done - before

    def finish(self, on_completion):
        """Wait for both processes and set ``error`` if the range failed."""
        errors = []
        for name, proc, err in (('send', self.sender, self.errs[0]),
                                ('receive', self.receiver, self.errs[1])):
            if proc is None:
                continue
            proc.wait()
            if on_completion:
                on_completion(proc)
            if proc.returncode:
                errors.append(_('%(name)s exited with %(rc)s: %(err)s') % {
                    'name': name, 'rc': proc.returncode, 'err': _tail(err)})
        # The first pass of a pre-copy may end early, at its time limit.
        covered = self.stats.get('length') if self.stats else None
        if not errors and (covered is None or covered > self.length or (
                covered < self.length and not self.recording)):
            errors.append(_('receive reported no completed copy: %s') % (
                _tail(self.errs[1]) or _('no output')))
        if errors and self.error is None:
            self.error = '; '.join(errors)
        self.ended = time.monotonic()
        for err in self.errs:
            err.close()

    def kill(self):
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None
        _stop([p for p in (self.sender, self.receiver) if p])

    def abandon(self):
        """Stop a stream that will not run, and release what it holds."""
        self.kill()
        if self.receiver:
            ty.cast(ty.IO[bytes], self.receiver.stdout).close()
        for err in self.errs:
            err.close()


def _stop(procs):
    """Stop processes so that the root helpers behind sudo stop too.

    sudo relays SIGTERM to the helper but cannot relay SIGKILL, so SIGKILL
    comes only after KILL_GRACE seconds. A helper whose stream is closed
    exits on its own as well.
    """
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + KILL_GRACE
    for proc in running:
        try:
            proc.wait(max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def _run_helper(cmd, timeout):
    """Run one helper call.

    :returns: (exit code, or None after a timeout, stdout, the last line of
        stderr: the one that says what failed, for ssh, sudo and the helper)
    """
    proc = subprocess.Popen(  # nosec: B603 argv list
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop([proc])
        out, err = proc.communicate()
        return None, out, _('timed out after %d seconds') % timeout
    lines = err.decode('utf-8', 'replace').strip().splitlines() or ['']
    return proc.returncode, out, lines[-1].strip()[-STDERR_TAIL:]


def check_namespaces(pairs, host=None, verify=True, cipher=DEFAULT_CIPHER,
                     helper=('nova-vpmem-copy',), root_helper=('sudo', '-n'),
                     ssh_args=(), known_hosts=None, timeout=60,
                     precopy=False, *, instance):
    """Check both ends of a copy before the instance is powered off.

    Runs the helper's ``check`` on this host for the sources and on
    ``host`` for the destinations, with the root helper and ssh options of
    the copy itself. That covers ssh, the host key, the cipher, sudo, the
    helper and its protocol version, and each namespace: known to its host,
    used by nobody, large enough.

    :param precopy: the copy is a pre-copy, whose record needs a
        cryptographic digest even without ``verify``.
    :returns: the digest to verify chunks with, the first of this host's
        that the destination has too ('none' without ``verify``); for a
        pre-copy, that and the first cryptographic one, for the record.
    :raises: VPMEMCopyCheckFailed saying what failed where.
    """
    for pair in pairs:
        _check_pair(pair)
    transport = _Transport(host, helper, root_helper, cipher, ssh_args,
                           known_hosts, instance)
    sources, dests = [], []
    for pair in pairs:
        sources += ['--namespace', pair.source, '--length', pair.size]
        dests += ['--namespace', pair.dest, '--length',
                  pair.dest_size or pair.size]
    # The guest may still run and map its source namespaces.
    ours = _ask(transport.local('check', '--sources', *sources),
                'localhost', timeout)
    theirs = _ask(transport.remote('check', *dests), host or 'localhost',
                  timeout)
    common = [d for d in ours['digests'] if d in theirs['digests']]
    digest = common[0] if verify and common else 'none'
    if precopy:
        common = [d for d in common if d in CRYPTO_DIGESTS]
    elif not verify:
        return digest
    if not common:
        raise exception.VPMEMCopyCheckFailed(
            host=host or 'localhost',
            reason=_('no %(kind)sdigest in common: this host has %(ours)s, '
                     'the destination %(theirs)s') % {
                         'kind': _('cryptographic ') if precopy else '',
                         'ours': ours['digests'],
                         'theirs': theirs['digests']})
    return (digest, common[0]) if precopy else digest


def _ask(cmd, where, timeout):
    """Run the helper's check; return its answer."""
    rc, out, err = _run_helper(cmd, timeout)
    if rc != 0:
        raise exception.VPMEMCopyCheckFailed(
            host=where, reason=err or _('exit code %s') % rc)
    try:
        answer = jsonutils.loads(out)
    except ValueError:
        answer = {}
    if not isinstance(answer, dict) or answer.get('protocol') != PROTOCOL:
        raise exception.VPMEMCopyCheckFailed(
            host=where,
            reason=_('the helper does not speak protocol %(ours)d (it '
                     'answered %(out)r); install the same nova release on '
                     'both hosts') % {'ours': PROTOCOL, 'out': out[:200]})
    return answer


def zero_namespaces(names, host=None, cipher=DEFAULT_CIPHER,
                    helper=('nova-vpmem-copy',), root_helper=('sudo', '-n'),
                    ssh_args=(), known_hosts=None, timeout=600, *, instance):
    """Zero namespaces on ``host`` (None: this host) with the root helper.

    Used to wipe destination namespaces when a migration fails after their
    data was copied. Each namespace gets ``timeout`` seconds.

    :param names: namespace names; the helper zeroes only those its host
        recorded as the instance's, or as zeroed.
    :returns: the names that could not be zeroed (errors are logged).
    """
    for name in names:
        _check_name(name)
    transport = _Transport(host, helper, root_helper, cipher, ssh_args,
                           known_hosts, instance)
    dirty = []
    for name in names:
        rc, _out, err = _run_helper(
            transport.remote('zero', '--namespace', name), timeout)
        if rc != 0:
            LOG.error('Could not zero vPMEM namespace %(name)s: %(err)s',
                      {'name': name, 'err': err})
            dirty.append(name)
    return dirty


def _zero_gaps(pairs, transport, deadline):
    """Zero the destination range between the data and the label areas.

    :returns: (pair, error message) of the first failure, or None.
    """
    for pair in pairs:
        if not pair.gap():
            continue
        offset, length = pair.gap()
        timeout = max(1, deadline - time.monotonic()) if deadline else None
        rc, _out, err = _run_helper(
            transport.remote('zero', '--namespace', pair.dest, '--offset',
                             offset, '--length', length), timeout)
        if rc != 0:
            return pair, _('zeroing %(name)s between the data and the label '
                           'area failed: %(err)s') % {'name': pair.dest,
                                                      'err': err}
    return None


class PreparedCopy(object):
    """The receiving ends of a copy, started before the guest stops.

    Returned by :func:`prepare_copy` for :func:`copy_namespaces`; ssh's
    connection and the remote helper's start then happen while the guest
    still runs. :meth:`cancel` stops the receivers that were not used.
    """

    def __init__(self, pairs, host, streams, chunk_size, transport):
        self.args = (list(pairs), host, streams, chunk_size)
        self.transport = transport
        self.streams = _streams(pairs, streams, chunk_size)

    def cancel(self):
        for stream in self.streams:
            if stream.receiver and not stream.sender:
                stream.abandon()


def prepare_copy(pairs, host=None, streams=2, cipher=DEFAULT_CIPHER,
                 helper=('nova-vpmem-copy',), root_helper=('sudo', '-n'),
                 ssh_args=(), chunk_size=CHUNK_SIZE, on_execute=None,
                 known_hosts=None, *, instance):
    """Start the receivers of the first streams of a copy.

    Takes the arguments of :func:`copy_namespaces` that shape the streams;
    give the result to it as ``prepared``, or cancel it.
    """
    transport = _Transport(host, helper, root_helper, cipher, ssh_args,
                           known_hosts, instance)
    for pair in pairs:
        _check_pair(pair)
    streams = max(1, int(streams))
    prepared = PreparedCopy(pairs, host, streams, chunk_size, transport)
    try:
        for stream in prepared.streams[:streams]:
            stream.start_receiver(transport, False, on_execute)
    except Exception:
        with excutils.save_and_reraise_exception():
            prepared.cancel()
    return prepared


def copy_namespaces(pairs, host=None, streams=2, verify=True,
                    cipher=DEFAULT_CIPHER, bandwidth=0, timeout=0,
                    helper=('nova-vpmem-copy',), root_helper=('sudo', '-n'),
                    ssh_args=(), chunk_size=CHUNK_SIZE, progress=None,
                    on_execute=None, on_completion=None, digest=None,
                    known_hosts=None, record=None, prepared=None, *, instance):
    """Copy the content of vPMEM namespaces, verified, to ``host``.

    :param pairs: list of :class:`NamespacePair`; each destination must be
        at least ``size`` bytes (the helper checks it against ndctl), and
        is laid out as the pair says.
    :param host: destination address for ssh, or None for this host.
    :param streams: number of pipelines run at once; each namespace is split
        into this many aligned ranges, so several ranges and namespaces are
        copied in parallel.
    :param verify: hash every chunk on the source and again after it has
        landed on the destination.
    :param digest: the digest to do it with (see :func:`check_namespaces`),
        None for the source helper's best.
    :param cipher: ssh cipher; compression is always off.
    :param bandwidth: cap in bytes per second over all streams, 0 for none.
    :param timeout: seconds before the copy is aborted, 0 for no limit.
    :param helper: argv of the root helper (``nova-vpmem-copy``).
    :param root_helper: argv prefix that runs the helper as root.
    :param ssh_args: extra ssh arguments (e.g. ``-F`` config), used in tests.
    :param instance: UUID of the instance whose data is copied: each
        host's helper touches only the namespaces that its host recorded as
        this instance's (the destination's: given to it for this move).
    :param known_hosts: known_hosts file that pins the destination's host
        key, None for ssh's usual files; host keys are always checked.
    :param progress: callable(bytes_copied, bytes_total).
    :param on_execute: callable(process) for each process started.
    :param on_completion: callable(process) for each process reaped.
    :param record: the :class:`Record` of a pre-copy's first pass: only
        the chunks that changed since are sent, and the destination checks
        every other chunk against the source's digest of it, in the
        record's digest. Its chunk size replaces ``chunk_size``.
    :param prepared: the :func:`prepare_copy` of this copy.
    :returns: a list with one dict of statistics per pair.
    :raises: VPMEMCopyFailed naming the namespace and the failing process;
        its ``touched`` attribute lists the destinations that may have been
        written, for the caller to zero (:func:`zero_namespaces`) once the
        instance runs again.
    """
    transport = _Transport(host, helper, root_helper, cipher, ssh_args,
                           known_hosts, instance)
    for pair in pairs:
        _check_pair(pair)
    streams = max(1, int(streams))
    if record is not None:
        chunk_size = record.chunk_size
    run = _CopyRun(
        transport, streams, digest='none' if not verify else digest,
        rate=bandwidth // streams if bandwidth else 0, chunk_size=chunk_size,
        deadline=time.monotonic() + timeout if timeout else None,
        on_execute=on_execute, on_completion=on_completion, record=record)
    if prepared:
        if prepared.args != (list(pairs), host, streams, chunk_size):
            prepared.cancel()
            raise ValueError(_('The prepared copy is for other streams'))
        # Its streams know their pairs by identity.
        pairs = prepared.args[0]
    try:
        run.copy(prepared.streams if prepared else
                 _streams(pairs, streams, chunk_size), progress, timeout)
    finally:
        if prepared:
            prepared.cancel()
    failed = run.failed
    if not failed and record is not None:
        failed = _resend_stale(run, timeout)
    if not failed:
        gap_failure = _zero_gaps(pairs, transport, run.deadline)
        if gap_failure:
            failed = next(s for s in run.finished if s.pair is gap_failure[0])
            failed.error = gap_failure[1]
    if failed:
        raise _copy_failed(failed, run, host)
    return [_pair_result(pair, run.finished, host) for pair in pairs]


def precopy_namespaces(pairs, digest, host=None, streams=2, bandwidth=0,
                       time_limit=0, timeout=0, cipher=DEFAULT_CIPHER,
                       helper=('nova-vpmem-copy',),
                       root_helper=('sudo', '-n'), ssh_args=(),
                       chunk_size=CHUNK_SIZE, progress=None, on_execute=None,
                       on_completion=None, known_hosts=None, *, instance):
    """Copy vPMEM namespaces while the guest runs: a pre-copy's first pass.

    The source helper reads each namespace although the guest maps it (its
    ``send --live`` is the only call allowed to), and only reads it. The
    destination helper checks every chunk as the copy does, and reports
    its digest for the :class:`Record` that :func:`copy_namespaces` then
    sends the second pass against, with the guest off.

    Takes the arguments of :func:`copy_namespaces`, and:

    :param digest: a digest in ``CRYPTO_DIGESTS`` that both hosts have
        (:func:`check_namespaces` with ``precopy=True``): the guest
        controls the data, so chunks with one digest must not be craftable.
    :param time_limit: seconds after which the pass stops at the next chunk
        without failing (the second pass sends what is left), 0 for none.
    :returns: the :class:`Record` of what landed on the destination.
    :raises: VPMEMCopyFailed as :func:`copy_namespaces` does.
    """
    if digest not in CRYPTO_DIGESTS:
        raise ValueError(_('A pre-copy needs one of the digests %s') %
                         ', '.join(CRYPTO_DIGESTS))
    transport = _Transport(host, helper, root_helper, cipher, ssh_args,
                           known_hosts, instance)
    for pair in pairs:
        _check_pair(pair)
    streams = max(1, int(streams))
    record = Record(digest, chunk_size)
    now = time.monotonic()
    run = _CopyRun(
        transport, streams, digest=digest,
        rate=bandwidth // streams if bandwidth else 0, chunk_size=chunk_size,
        deadline=now + timeout if timeout else None,
        on_execute=on_execute, on_completion=on_completion,
        recording=record, stop_at=now + time_limit if time_limit else None)
    run.copy(_streams(pairs, streams, chunk_size), progress, timeout)
    if run.failed:
        raise _copy_failed(run.failed, run, host)
    total = sum(pair.size for pair in pairs)
    LOG.info('vPMEM pre-copy to %(host)s done in %(secs).1f s: %(rec)d of '
             '%(total)d bytes landed as data, the second pass checks or '
             'sends the rest', {'host': host or 'localhost',
                                'secs': time.monotonic() - now,
                                'rec': record.recorded_bytes(),
                                'total': total})
    return record


def _streams(pairs, streams, chunk_size):
    return [_Stream(pair, src_off + off, dst_off + off, length)
            for pair in pairs
            for src_off, dst_off, seg_len in pair.segments()
            for off, length in _split(seg_len, streams, chunk_size)]


def _resend_stale(run, timeout):
    """Send again the chunks whose record the destination found stale.

    :returns: the stream that failed, or None.
    """
    stale: list[_Stream] = []
    for stream in run.finished:
        for pos, length in stream.stats.get('stale', ()):
            last = stale[-1] if stale else None
            if (last and last.pair is stream.pair and
                    last.offset + last.length == stream.offset + pos and
                    last.dest_offset + last.length ==
                    stream.dest_offset + pos):
                last.length += length
            else:
                stale.append(_Stream(stream.pair, stream.offset + pos,
                                     stream.dest_offset + pos, length))
    if not stale:
        return None
    LOG.warning('%(n)d byte ranges of vPMEM data did not match the record '
                'of the pre-copy on the destination; sending them again',
                {'n': len(stale)})
    rerun = _CopyRun(
        run.transport, run.streams, run.digest, run.rate, run.chunk_size,
        run.deadline, run.on_execute, run.on_completion)
    rerun.copy(stale, None, timeout)
    run.finished += rerun.finished
    return rerun.failed


def _copy_failed(failed, run, host):
    exc = exception.VPMEMCopyFailed(
        source=failed.pair.source, dest=failed.pair.dest,
        host=host or 'localhost', reason=failed.error)
    exc.touched = list(dict.fromkeys(s.pair.dest for s in run.finished))
    return exc


def _pair_result(pair, finished, host):
    """The statistics of one copied pair, logged as they are returned."""
    mine = [s for s in finished if s.pair is pair]
    secs = max(s.ended for s in mine) - min(s.started for s in mine)
    result = {'source': pair.source, 'dest': pair.dest, 'bytes': pair.size,
              'zero_bytes': sum(s.stats['zero_bytes'] for s in mine),
              'same_bytes': sum(s.stats.get('same_bytes', 0) for s in mine),
              'seconds': secs, 'digest': mine[0].stats['digest']}
    LOG.info('Copied vPMEM namespace %(source)s to %(host)s:%(dest)s: '
             '%(bytes)d bytes, %(zero_bytes)d of them zero and '
             '%(same_bytes)d unchanged since the pre-copy, neither sent, '
             '%(seconds).1f s, %(rate).0f MB/s, digest %(digest)s',
             dict(result, host=host or 'localhost',
                  rate=pair.size / max(secs, 1e-6) / 1e6))
    return result


class _CopyRun(object):
    """The streams of one copy, at most ``streams`` of them at a time.

    One thread reads every stream's statistics through a selector; the
    first stream that fails, or the deadline, stops them all.

    The first pass of a pre-copy fills ``recording`` and starts no stream
    after ``stop_at`` (streams running then end at their next chunk); the
    second pass sends against ``record``.
    """

    def __init__(self, transport, streams, digest, rate, chunk_size,
                 deadline, on_execute, on_completion, record=None,
                 recording=None, stop_at=None):
        self.record = record
        self.recording = recording
        self.stop_at = stop_at
        self.transport = transport
        self.streams = streams
        self.digest = digest
        self.rate = rate
        self.chunk_size = chunk_size
        self.deadline = deadline
        self.on_execute = on_execute
        self.on_completion = on_completion
        self.running: dict[int, tuple[_Stream, ty.IO[bytes]]] = {}
        self.finished: list[_Stream] = []
        self.failed: ty.Optional[_Stream] = None
        self.selector = selectors.DefaultSelector()

    def copy(self, streams, progress, timeout):
        pending = collections.deque(streams)
        total = sum(stream.length for stream in streams)
        copied = 0
        try:
            while (pending or self.running) and not self.failed:
                self._start(pending)
                wait = self._wait(timeout) if not self.failed else 0
                if self.failed:
                    break
                for key, _events in self.selector.select(wait):
                    copied += self._read(key.fd)
                    if progress:
                        progress(copied, total)
        finally:
            self._stop_running()
            self.selector.close()

    def _stop_after(self):
        """Seconds the next stream of a first pass may run, None if none."""
        if not self.stop_at:
            return 0
        left = self.stop_at - time.monotonic()
        # The helper reads 0 as no limit.
        return max(left, 0.001) if left > 0 else None

    def _start(self, pending):
        while pending and len(self.running) < self.streams:
            stop_after = None
            if self.recording:
                stop_after = self._stop_after()
                if stop_after is None:
                    # Pass 1's time is up: pass 2 sends the rest.
                    pending.clear()
                    return
            stream = pending.popleft()
            stream.recording = self.recording
            self.finished.append(stream)
            try:
                out = stream.start(self.transport, self.digest, self.rate,
                                   self.chunk_size, self.on_execute,
                                   record=self.record, stop_after=stop_after)
            except OSError as e:
                stream.error = _('could not start the copy: %s') % e
                stream.abandon()
                self.failed = stream
                return
            self.running[out.fileno()] = (stream, out)
            self.selector.register(out, selectors.EVENT_READ)

    def _wait(self, timeout):
        """Seconds to wait for output; 0 after the deadline, failing."""
        if not self.deadline:
            return 1.0
        wait = min(1.0, self.deadline - time.monotonic())
        if wait <= 0:
            self.failed = next(iter(self.running.values()))[0]
            self.failed.error = _('timed out after %d seconds') % timeout
            return 0
        return wait

    def _read(self, fd):
        """Feed a stream's output; reap it at its end. Bytes copied."""
        stream, out = self.running[fd]
        data = os.read(fd, 65536)
        if data:
            copied = stream.feed(data)
            if stream.error and not self.failed:
                self.failed = stream
            return copied
        self._reap(fd)
        if stream.error and not self.failed:
            self.failed = stream
        return 0

    def _reap(self, fd):
        stream, out = self.running.pop(fd)
        self.selector.unregister(out)
        out.close()
        stream.finish(self.on_completion)

    def _stop_running(self):
        for fd, (stream, _out) in list(self.running.items()):
            stream.kill()
            self._reap(fd)
