#!/usr/bin/env python3
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

"""Benchmark the vPMEM copy against the spec's daxio pipeline and plain ssh.

Everything runs on this machine: files on a tmpfs stand in for device-DAX
namespaces, and a throw-away sshd on a random loopback port (own host and
client keys, pinned known_hosts, no login shell rc file) stands in for
the destination host. In each round the variants are run one after the
other on every data set (interleaved), and every result is checked with
cmp:

  naive    the spec's pipeline with correct flags, default ssh cipher:
           daxio --input=SRC --len=N | ssh DEST daxio --output=DST --len=N
           (daxio is the STAND-IN e2e/bin/daxio,
           because PMDK's daxio refuses regular files)
  naive-dd the same with dd in place of the stand-in (default cipher)
  ssh-cat  cat SRC | ssh -c aes128-gcm@openssh.com DEST 'cat 1<>DST', the
           ceiling of one ssh stream (1<> writes in place like a device)
  copier   nova.virt.libvirt.vpmem_copy.copy_namespaces (verification on),
           destination dirty or pre-zeroed, once with verification off and
           once with a single stream (the default is --streams)

With --ab REV [REV ...] it compares checkouts instead: each REV is a git
revision of this repository (or "workspace" for .workspace/nova as it is
now, edits included), built with that revision's own tools/workspace into a
temporary directory. Every round runs ssh-cat and then each checkout's
engine and helper (copier, dst dirty, verified), in a rotated order, on
every data set; each engine runs in its own process, imported before
anything is timed. The report gives each checkout's MB/s, CPU-s/GB and
ratio to ssh-cat, its ratio to the first checkout, and every round's
figures, so a change can show what it costs. Engines and helpers that act
for an instance on namespace names and older ones that take device paths
run side by side: the stand-in helper (tools/nova-vpmem-copy-on-files)
gives either its files. With --ready every copy's receivers are started
ahead, as the driver starts them before the power-off, and ssh-cat's ssh
logs in and starts its remote cat ahead; both are timed from there (the
data path without the logins, which are most of a small copy's cost), and
their CPU-s/GB still count everything.

With --downtime it measures instead what a cold migration's guest sees: the
fixed cost of a copy (where it goes: ssh, helper start, the copy of a tiny
namespace with 1 and 2 streams) and the downtime, from power-off to the end
of the copy, with and without pre-copy: the first pass copies the namespace
(timed, but the guest runs), then --changed-percent of its 1 MiB chunks get
new random data (the guest's writes), then the second pass runs (the
downtime). Without pre-copy the downtime is a full copy of the same data,
run right after in the same round; naive and ssh-cat copy the same data for
reference. Random and 90%-zero data sets.

CPU-s/GB adds the CPU time of this process and its children to that of the
sshd listener's children (everything the remote side ran). Both "hosts"
share this machine's cores, so absolute MB/s are pessimistic; ratios
within one run and CPU-s/GB are the portable numbers.

Run it as root from the top of this repository after tools/workspace build
(it uses the patched tree in .workspace/nova, or $NOVA_TREE), e.g.:

  .venv/bin/python tools/bench_vpmem_copy.py                  # 4 GiB
  .venv/bin/python tools/bench_vpmem_copy.py --size-mib 1024 --rounds 3
  .venv/bin/python tools/bench_vpmem_copy.py --downtime --size-mib 2048
  .venv/bin/python tools/bench_vpmem_copy.py --ab 293c90d workspace \
      --size-mib 1024 --zero-percent 0,90 --rounds 5

Results are written to --out (JSON and, if matplotlib imports, a PNG).
"""

import argparse
import inspect
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The patched nova tree that tools/workspace builds (or NOVA_TREE).
ROOT = os.environ.get('NOVA_TREE') or os.path.join(
    os.path.dirname(HERE), '.workspace', 'nova')
sys.path.insert(0, ROOT)
FAKE_DAXIO = os.path.join(os.path.dirname(HERE), 'e2e', 'bin', 'daxio')
# The helper with regular files as namespaces (a stand-in entry point).
# Its name says nova-vpmem-copy: the helpers of older revisions (the A/B
# mode) tell each other from other users of a device by the command line.
ON_FILES = os.path.join(HERE, 'nova-vpmem-copy-on-files')
MiB = 1024 * 1024
HOST = 'bench-dest'
CIPHER = 'aes128-gcm@openssh.com'
# The instance whose namespaces every copy moves: the stand-in helper's
# listing gives it every file, the destinations for its move (see allow()).
INSTANCE = '5e4c7a3b-2d1f-4e0a-9b8c-7d6e5f4a3b2c'


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, **kwargs)


class Sshd(object):
    """A loopback sshd with its own keys; ssh_args reach it as HOST.

    Its sessions do not read the login shell's rc file: what a login costs
    is sshd's and the helper's, not whatever root's ~/.bashrc runs.
    """

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, 'ssh')
        os.makedirs(self.dir)
        j = lambda n: os.path.join(self.dir, n)  # noqa: E731
        for key in ('host_key', 'client_key'):
            run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', j(key)])
        shutil.copy(j('client_key.pub'), j('authorized_keys'))
        sock = socket.socket()
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
        sock.close()
        with open(j('sshd_config'), 'w') as f:
            f.write('\n'.join([
                'Port %d' % port, 'ListenAddress 127.0.0.1',
                'HostKey ' + j('host_key'),
                'AuthorizedKeysFile ' + j('authorized_keys'),
                'PasswordAuthentication no', 'UsePAM no',
                'KbdInteractiveAuthentication no',
                'PermitRootLogin prohibit-password', 'StrictModes no',
                'PidFile ' + j('sshd.pid'), 'LogLevel ERROR',
                # bash run by sshd reads ~/.bashrc at shell level 1 only.
                # Root's may do anything (here it runs pyenv's init, some
                # 40 processes and 0.1 CPU-s per login); a copy logs in
                # once per stream, ssh-cat once.
                'SetEnv SHLVL=1', '']))
        with open(j('host_key.pub')) as f:
            key = ' '.join(f.read().split()[:2])
        with open(j('known_hosts'), 'w') as f:
            f.write('[127.0.0.1]:%d %s\n' % (port, key))
        with open(j('ssh_config'), 'w') as f:
            f.write('\n'.join([
                'Host ' + HOST, '  HostName 127.0.0.1', '  Port %d' % port,
                '  User root', '  IdentityFile ' + j('client_key'),
                '  IdentitiesOnly yes',
                '  UserKnownHostsFile ' + j('known_hosts'),
                '  GlobalKnownHostsFile /dev/null', '']))
        self.ssh_args = ['-F', j('ssh_config')]
        os.makedirs('/run/sshd', exist_ok=True)
        sshd = shutil.which('sshd') or '/usr/sbin/sshd'
        self.proc = subprocess.Popen(
            [sshd, '-D', '-e', '-f', j('sshd_config')],
            start_new_session=True)
        for _ in range(100):
            try:
                socket.create_connection(('127.0.0.1', port), 1).close()
                break
            except OSError:
                time.sleep(0.05)

    def cpu(self):
        """CPU seconds of the sshd listener's reaped children."""
        with open('/proc/%d/stat' % self.proc.pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        tick = os.sysconf('SC_CLK_TCK')
        # Fields 16 and 17 (cutime, cstime), counted from 1 with pid and
        # comm removed: indexes 13 and 14.
        return (int(fields[13]) + int(fields[14])) / tick

    def wait_idle(self, timeout=10):
        """Wait until the listener has reaped all its session children.

        Their CPU time only shows in the listener's cutime once reaped.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = False
            for pid in os.listdir('/proc'):
                if not pid.isdigit():
                    continue
                try:
                    with open('/proc/%s/stat' % pid) as f:
                        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == self.proc.pid:
                    children = True
                    break
            if not children:
                return
            time.sleep(0.01)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait()


def make_source(path, size, zero_fraction, seed):
    """Random data with zero_fraction of its 1 MiB extents zeroed."""
    with open(path, 'wb') as f:
        left = size
        while left:
            n = min(64 * MiB, left)
            f.write(os.urandom(n))
            left -= n
    extents = size // MiB
    rng = random.Random(seed)
    zero = bytes(MiB)
    with open(path, 'r+b') as f:
        for i in rng.sample(range(extents), int(extents * zero_fraction)):
            f.seek(i * MiB)
            f.write(zero)


def prepare_dest(path, size, dirty, dirt):
    """Fill the destination with random data, or with zeros.

    The random data is the dirt file rotated by one MiB plus a fresh last
    MiB, so it differs from every source (and from a previous copy of the
    dirt file itself) in every chunk without keeping a second copy in RAM.
    """
    if dirty:
        run(['dd', 'if=' + dirt, 'of=' + path, 'bs=1M', 'skip=1',
             'conv=notrunc', 'status=none'])
        with open(path, 'r+b') as f:
            f.seek(size - MiB)
            f.write(os.urandom(MiB))
    else:
        run(['dd', 'if=/dev/zero', 'of=' + path, 'bs=4M',
             'count=%d' % (size // (4 * MiB)), 'conv=notrunc'],
            stderr=subprocess.DEVNULL)


def cpu_now(sshd):
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime +
            sshd.cpu())


def namespace_name(path):
    """The name of the stand-in namespace in file path (see allow())."""
    return os.path.basename(path)


def engine_call(vpmem_copy, src, dst, size):
    """The pair and the keywords of an engine's copy of src to dst.

    An engine bound to an instance takes namespace names and the instance;
    older ones (the A/B mode's older revisions) take device paths.
    """
    if 'instance' in inspect.signature(
            vpmem_copy.copy_namespaces).parameters:
        return (vpmem_copy.NamespacePair(namespace_name(src),
                                         namespace_name(dst), size),
                {'instance': INSTANCE})
    return vpmem_copy.NamespacePair(src, dst, size), {}


def pipeline(left, right):
    """Run left | right (argv lists, no shell); fail on any non-zero exit."""
    a = subprocess.Popen(left, stdout=subprocess.PIPE)
    b = subprocess.Popen(right, stdin=a.stdout)
    a.stdout.close()
    if b.wait() or a.wait():
        raise RuntimeError('%s | %s failed' % (left, right))


class Bench(object):

    def __init__(self, args, workdir, sshd):
        self.args = args
        self.dir = workdir
        self.sshd = sshd
        self.listing = os.path.join(workdir, 'namespaces.json')
        self.known = {}
        self.digest = None
        # Import the engine before anything is timed: its package,
        # nova.virt.libvirt, imports the whole libvirt driver (about 4
        # CPU-seconds here), which nova-compute does once when it starts,
        # not at its first copy. Imported inside the first timed copy, it
        # made every benchmark's round 1 look slow.
        from nova.virt.libvirt import vpmem_copy  # noqa: F401
        pythonpath = os.pathsep.join([ROOT] + args.pythonpath)
        self.helper = ['env', 'PYTHONPATH=' + pythonpath, sys.executable,
                       ON_FILES, self.listing]

    def allow(self, path, size, dest=False):
        """List a file as a namespace of the stand-in helper.

        Each one is INSTANCE's, and a destination (dest) is given to it
        for its move, as nova-compute records them in its owners file.
        """
        self.known[path] = (size, dest)
        with open(self.listing, 'w') as f:
            # A standalone tool: the standard library's json is enough.
            json.dump([{'name': namespace_name(p), 'path': p,  # noqa: N324
                        'size': s, 'owner': INSTANCE, 'incoming': d}
                       for p, (s, d) in self.known.items()], f)
        os.chmod(self.listing, 0o600)

    def naive(self, src, dst, size):
        # The spec's pipeline, with correct flags. Not what Nova runs: daxio
        # exits 0 when its input ends early, so a truncated copy passes for
        # a good one; measure()'s cmp is what checks it here.
        remote = [FAKE_DAXIO, '--output=%s' % dst, '--len=%d' % size]
        pipeline([FAKE_DAXIO, '--input=%s' % src, '--len=%d' % size],
                 ['ssh', '-T', '-o', 'BatchMode=yes'] + self.sshd.ssh_args +
                 ['--', HOST, ' '.join(shlex.quote(a) for a in remote)])

    def naive_dd(self, src, dst, size):
        # The same pipeline with dd in place of the Python daxio stand-in,
        # to show how much of the naive result is the stand-in's own cost.
        count = 'count=%d' % (size // MiB)
        pipeline(['dd', 'if=' + src, 'bs=1M', count, 'status=none'],
                 ['ssh', '-T', '-o', 'BatchMode=yes'] + self.sshd.ssh_args +
                 ['--', HOST, 'dd of=%s bs=1M iflag=fullblock %s '
                  'conv=notrunc status=none' % (dst, count)])

    def ssh_cat_argv(self, dst):
        return (['ssh', '-T', '-o', 'BatchMode=yes', '-c', CIPHER] +
                self.sshd.ssh_args + ['--', HOST, 'cat 1<>' + dst])

    def ssh_cat(self, src, dst, size):
        pipeline(['cat', src], self.ssh_cat_argv(dst))

    def ssh_cat_ready(self, src, dst, size):
        """ssh-cat timed from the point its ssh and remote cat run.

        The counterpart of a copy whose receivers were started ahead: no
        login in the time of either, all of it in their CPU-s.
        """
        read_fd, write_fd = os.pipe()
        ssh = subprocess.Popen(self.ssh_cat_argv(dst), stdin=read_fd)
        os.close(read_fd)
        time.sleep(1)
        t0 = time.monotonic()
        cat = subprocess.Popen(['cat', src], stdout=write_fd)
        os.close(write_fd)
        if cat.wait() or ssh.wait():
            raise RuntimeError('ssh-cat (ready) failed')
        return {'seconds': time.monotonic() - t0}

    def copier(self, src, dst, size, verify=True, streams=None,
               record=None, digest=None, prepared=None):
        from nova.virt.libvirt import vpmem_copy
        pair, kwargs = engine_call(vpmem_copy, src, dst, size)
        return vpmem_copy.copy_namespaces(
            [pair], host=HOST,
            streams=streams or self.args.streams, verify=verify,
            cipher=CIPHER, helper=self.helper, root_helper=(),
            ssh_args=self.sshd.ssh_args, record=record, digest=digest,
            prepared=prepared, **kwargs)

    def prepare(self, src, dst, size, streams=None):
        """Start the receivers ahead, as the driver does before power-off.

        Waits until the remote helpers run, as they do by the time a
        guest is powered off.
        """
        from nova.virt.libvirt import vpmem_copy
        pair, kwargs = engine_call(vpmem_copy, src, dst, size)
        prepared = vpmem_copy.prepare_copy(
            [pair], host=HOST,
            streams=streams or self.args.streams, cipher=CIPHER,
            helper=self.helper, root_helper=(), ssh_args=self.sshd.ssh_args,
            **kwargs)
        time.sleep(1)
        return prepared

    def precopy(self, src, dst, size, digest):
        from nova.virt.libvirt import vpmem_copy
        pair, kwargs = engine_call(vpmem_copy, src, dst, size)
        return vpmem_copy.precopy_namespaces(
            [pair], digest, host=HOST,
            streams=self.args.streams, cipher=CIPHER, helper=self.helper,
            root_helper=(), ssh_args=self.sshd.ssh_args, **kwargs)

    def crypto_digest(self, src, dst, size):
        """The digest of a pre-copy's record, as the driver's check says."""
        from nova.virt.libvirt import vpmem_copy
        pair, kwargs = engine_call(vpmem_copy, src, dst, size)
        return vpmem_copy.check_namespaces(
            [pair], host=HOST,
            cipher=CIPHER, helper=self.helper, root_helper=(),
            ssh_args=self.sshd.ssh_args, precopy=True, **kwargs)[1]

    def timed(self, func, *args, **kwargs):
        """Run func; return (its result, seconds, CPU seconds)."""
        cpu0 = cpu_now(self.sshd)
        t0 = time.monotonic()
        out = func(*args, **kwargs)
        secs = time.monotonic() - t0
        self.sshd.wait_idle()
        return out, secs, cpu_now(self.sshd) - cpu0

    def measure(self, func, src, dst, size, dirty, **kwargs):
        prepare_dest(dst, size, dirty, self.dirt)
        run(['sync'])
        cpu0 = cpu_now(self.sshd)
        t0 = time.monotonic()
        out = func(src, dst, size, **kwargs)
        secs = time.monotonic() - t0
        if out and out[0]['digest'] != 'none':
            self.digest = out[0]['digest']
        self.sshd.wait_idle()
        cpu = cpu_now(self.sshd) - cpu0
        # cmp runs after the CPU sample so it is not counted.
        run(['cmp', '-n', str(size), src, dst])
        return {'seconds': secs, 'mb_s': size / secs / 1e6,
                'cpu_s_per_gb': cpu / (size / 1e9)}


def summarize(samples):
    return {k: statistics.median(s[k] for s in samples)
            for k in ('seconds', 'mb_s', 'cpu_s_per_gb')}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('--size-mib', type=int, default=4096,
                        help='namespace size for the comparison (MiB)')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--zero-percent', default='0,50,90',
                        help='share of zero 1 MiB extents in each data set')
    parser.add_argument('--streams', type=int, default=2)
    parser.add_argument('--linearity-mib', default='1024,2048,4096',
                        help='sizes for the copier linearity check, "" to '
                             'skip')
    parser.add_argument('--tmpdir', default=None,
                        help='where the stand-in namespaces live (default: '
                             'a huge-page tmpfs mounted for the run, else '
                             '/dev/shm)')
    parser.add_argument('--pythonpath', action='append', default=[],
                        help='extra PYTHONPATH for the helper, e.g. where '
                             'xxhash is installed')
    parser.add_argument('--downtime', action='store_true',
                        help='measure the fixed cost and the downtime with '
                             'and without pre-copy instead')
    parser.add_argument('--changed-percent', default='0,1,10,100',
                        help='with --downtime: shares of chunks changed '
                             'between the passes')
    parser.add_argument('--ab', nargs='+', metavar='REV',
                        help='compare the engines and helpers of these git '
                             'revisions ("workspace": .workspace/nova now)')
    parser.add_argument('--ready', action='store_true',
                        help='with --ab: start each copy\'s receivers (and '
                             'ssh-cat\'s ssh) ahead, as the driver does '
                             'before the power-off, and time from there')
    parser.add_argument('--out', default='bench_vpmem_copy')
    args = parser.parse_args()
    if args.ab:
        args.linearity_mib = ''
        if args.out == 'bench_vpmem_copy':
            args.out = 'bench_vpmem_ab'
    if args.downtime:
        args.zero_percent = '0,90'
        args.linearity_mib = ''
        if args.out == 'bench_vpmem_copy':
            args.out = 'bench_vpmem_downtime'

    if os.geteuid() != 0:
        sys.exit('run as root: the loopback sshd logs in as root')

    mounted = None
    if args.tmpdir:
        base = args.tmpdir
    else:
        base = tempfile.mkdtemp(prefix='vpmem-bench-')
        sets = len(args.zero_percent.split(','))
        need = max(args.size_mib * (sets + 1),
                   2 * max([0] + [int(m) for m in
                                  args.linearity_mib.split(',') if m]))
        if subprocess.run(['mount', '-t', 'tmpfs', '-o',
                           'huge=always,size=%dM' % (need + 1024),
                           'tmpfs', base]).returncode == 0:
            mounted = base
        else:
            shutil.rmtree(base)
            base = tempfile.mkdtemp(prefix='vpmem-bench-', dir='/dev/shm')
    workdir = tempfile.mkdtemp(dir=base)
    sshd = Sshd(workdir)
    try:
        bench = Bench(args, workdir, sshd)
        results = (run_ab if args.ab else run_downtime if args.downtime
                   else run_all)(args, bench, workdir)
    finally:
        sshd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if mounted:
            run(['umount', mounted])
            os.rmdir(mounted)
    (report_ab if args.ab else report_downtime if args.downtime
     else report)(args, results)


def run_all(args, bench, workdir):
    size = args.size_mib * MiB
    dst = os.path.join(workdir, 'dst')
    make_source(dst, size, 0, 0)
    bench.allow(dst, size, dest=True)
    datasets = {}
    for frac in [int(f) / 100 for f in args.zero_percent.split(',')]:
        path = os.path.join(workdir, 'src-%d' % int(frac * 100))
        make_source(path, size, frac, 42)
        bench.allow(path, size)
        datasets['%d%% zero' % int(frac * 100)] = path
    # Dirty destinations get the first data set (the one with the fewest
    # zeros by default), rotated: see prepare_dest().
    bench.dirt = next(iter(datasets.values()))
    variants = [
        ('naive (daxio|ssh default cipher)', bench.naive, True, {}),
        ('naive-dd (dd|ssh default cipher)', bench.naive_dd, True, {}),
        ('ssh-cat (aes128-gcm)', bench.ssh_cat, True, {}),
        ('copier, dst dirty', bench.copier, True, {}),
        ('copier, dst zeroed', bench.copier, False, {}),
        ('copier, dst dirty, no verify', bench.copier, True,
         {'verify': False}),
        ('copier, dst dirty, 1 stream', bench.copier, True,
         {'streams': 1}),
    ]
    samples = {}
    for rnd in range(args.rounds):
        for data, src in datasets.items():
            for name, func, dirty, kwargs in variants:
                r = bench.measure(func, src, dst, size, dirty, **kwargs)
                samples.setdefault((data, name), []).append(r)
                print('round %d  %-9s %-34s %7.0f MB/s %5.2f CPU-s/GB' % (
                    rnd + 1, data, name, r['mb_s'], r['cpu_s_per_gb']),
                    flush=True)
    for path in list(datasets.values()) + [dst]:
        os.unlink(path)

    linear = {}
    sizes = [int(s) for s in args.linearity_mib.split(',') if s]
    for mib in sizes:
        n = mib * MiB
        src = os.path.join(workdir, 'lsrc')
        make_source(src, n, 0, 7)
        bench.allow(src, n)
        bench.allow(dst, n, dest=True)
        # Random data overwrites every chunk: a zeroed destination is as
        # good as a dirty one here and saves the memory of a dirt file.
        runs = [bench.measure(bench.copier, src, dst, n, False)
                for _ in range(max(2, args.rounds - 1))]
        linear[mib] = summarize(runs)
        print('linearity %5d MiB: %.2f s, %.0f MB/s' % (
            mib, linear[mib]['seconds'], linear[mib]['mb_s']), flush=True)
        for path in (src, dst):
            os.unlink(path)
    return {'size_mib': args.size_mib, 'rounds': args.rounds,
            'streams': args.streams, 'digest': bench.digest,
            'cpus': os.cpu_count(),
            'results': {'%s | %s' % k: summarize(v)
                        for k, v in samples.items()},
            'samples': {'%s | %s' % k: v for k, v in samples.items()},
            'linearity': linear}


def report(args, results):
    res = results['results']
    print('\nsize %d MiB, %d rounds (medians), %d streams, digest %s, %d '
          'CPUs' % (results['size_mib'], results['rounds'],
                    results['streams'], results['digest'], results['cpus']))
    print('%-9s %-34s %8s %9s %8s %9s %9s' % (
        'data', 'variant', 'MB/s', 'CPU-s/GB', 'x naive', 'x naive-dd',
        'x ssh-cat'))
    datas = sorted({k.split(' | ')[0] for k in res})
    for data in datas:
        naive = res['%s | naive (daxio|ssh default cipher)' % data]['mb_s']
        naive_dd = res.get('%s | naive-dd (dd|ssh default cipher)' % data,
                           {'mb_s': float('nan')})['mb_s']
        ceil = res['%s | ssh-cat (aes128-gcm)' % data]['mb_s']
        for key, r in res.items():
            if key.startswith(data + ' | '):
                print('%-9s %-34s %8.0f %9.2f %8.2f %9.2f %9.2f' % (
                    data, key.split(' | ')[1], r['mb_s'], r['cpu_s_per_gb'],
                    r['mb_s'] / naive, r['mb_s'] / naive_dd,
                    r['mb_s'] / ceil))
    checks = []
    for data in datas:
        get = lambda v: res['%s | %s' % (data, v)]  # noqa: E731
        c = get('copier, dst dirty')
        checks.append((data, 'copier / naive',
                       c['mb_s'] / get('naive (daxio|ssh default '
                                       'cipher)')['mb_s']))
        if '%s | naive-dd (dd|ssh default cipher)' % data in res:
            checks.append((data, 'copier / naive-dd', c['mb_s'] / get(
                'naive-dd (dd|ssh default cipher)')['mb_s']))
        checks.append((data, 'copier / ssh-cat',
                       c['mb_s'] / get('ssh-cat (aes128-gcm)')['mb_s']))
        off = get('copier, dst dirty, no verify')
        checks.append((data, 'verification cost',
                       c['seconds'] / off['seconds'] - 1))
        checks.append((data, 'verify CPU cost',
                       c['cpu_s_per_gb'] / off['cpu_s_per_gb'] - 1))
    print('\ntargets: random >= 1.4x naive and >= 0.95x ssh-cat; 90% zero '
          '>= 5x naive; verification cost <= 25%')
    for data, what, value in checks:
        print('  %-9s %-18s %6.2f' % (data, what, value))
    if results['linearity']:
        print('\nlinearity (copier, random data):')
        for mib, r in sorted(results['linearity'].items()):
            print('  %5d MiB  %6.2f s  %6.0f MB/s  %.3f s/GiB' % (
                mib, r['seconds'], r['mb_s'], r['seconds'] / (mib / 1024)))
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(results, checks=checks), f, indent=2)  # noqa: N324
    print('\nwrote %s.json' % args.out)
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot
    except ImportError:
        print('matplotlib is not importable: no plot written')
        return
    fig, axes = pyplot.subplots(1, 2, figsize=(13, 5))
    names = sorted({k.split(' | ')[1] for k in res})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        axes[0].bar([d + i * width for d in range(len(datas))],
                    [res['%s | %s' % (d, name)]['mb_s'] for d in datas],
                    width, label=name)
    axes[0].set_xticks([d + 0.4 - width / 2 for d in range(len(datas))])
    axes[0].set_xticklabels(datas)
    axes[0].set_ylabel('MB/s (median)')
    axes[0].set_title('%d MiB namespace, loopback ssh, %d CPUs' % (
        results['size_mib'], results['cpus']))
    axes[0].legend(fontsize=7)
    if results['linearity']:
        lin = sorted(results['linearity'].items())
        axes[1].plot([m / 1024 for m, _ in lin],
                     [r['seconds'] for _, r in lin], 'o-')
        axes[1].set_xlabel('GiB')
        axes[1].set_ylabel('seconds')
        axes[1].set_title('copier, random data: time vs size')
    else:
        axes[1].axis('off')
    fig.tight_layout()
    fig.savefig(args.out + '.png', dpi=100)
    print('wrote %s.png' % args.out)


def change_chunks(path, size, percent, seed):
    """Give percent of the 1 MiB chunks of path new random data."""
    chunks = size // MiB
    rng = random.Random(seed)
    with open(path, 'r+b') as f:
        for i in sorted(rng.sample(range(chunks), chunks * percent // 100)):
            f.seek(i * MiB)
            f.write(os.urandom(MiB))


def fixed_cost(bench, workdir, rounds):
    """Where the fixed cost of a copy goes, medians of rounds runs."""
    tiny = 4 * MiB
    src, dst = (os.path.join(workdir, n) for n in ('tiny-src', 'tiny-dst'))
    make_source(src, tiny, 0, 1)
    make_source(dst, tiny, 0, 2)
    bench.allow(src, tiny)
    bench.allow(dst, tiny, dest=True)
    ssh = ['ssh', '-T', '-o', 'BatchMode=yes', '-c', CIPHER] + \
        bench.sshd.ssh_args + ['--', HOST]
    remote_help = ' '.join(shlex.quote(a) for a in bench.helper) + ' --help'
    steps = [
        ('ssh HOST true', None, lambda: run(ssh + ['true'])),
        ('helper start (local)', None, lambda: run(
            bench.helper + ['--help'], stdout=subprocess.DEVNULL)),
        ('helper start (over ssh)', None, lambda: run(
            ssh + [remote_help], stdout=subprocess.DEVNULL)),
        ('check both hosts', None,
         lambda: bench.crypto_digest(src, dst, tiny)),
    ]
    for streams in (1, 2):
        steps.append(('copy 4 MiB, %d stream(s)' % streams, None,
                      lambda s=streams: bench.copier(src, dst, tiny,
                                                     streams=s)))
        # What the driver's copy costs after the power-off: its receivers
        # were started ahead (not timed).
        steps.append((
            'copy 4 MiB, %d stream(s), ready' % streams,
            lambda s=streams: bench.prepare(src, dst, tiny, s),
            lambda prepared, s=streams: bench.copier(
                src, dst, tiny, streams=s, prepared=prepared)))
    result = {}
    for name, setup, step in steps:
        times = []
        for _ in range(max(5, rounds)):
            args = [setup()] if setup else []
            t0 = time.monotonic()
            step(*args)
            times.append(time.monotonic() - t0)
        result[name] = statistics.median(times)
        print('fixed cost  %-32s %.3f s' % (name, result[name]), flush=True)
    for path in (src, dst):
        os.unlink(path)
    return result


def run_downtime(args, bench, workdir):
    size = args.size_mib * MiB
    gb = size / 1e9
    fixed = fixed_cost(bench, workdir, args.rounds)
    src, dst = (os.path.join(workdir, n) for n in ('src', 'dst'))
    bench.allow(src, size)
    bench.allow(dst, size, dest=True)
    digest = None
    samples = {}
    for zero in [int(z) for z in args.zero_percent.split(',')]:
        data = '%d%% zero' % zero
        for rnd in range(args.rounds):
            make_source(src, size, zero / 100, 42 + rnd)
            make_source(dst, size, 0, 7)
            digest = digest or bench.crypto_digest(src, dst, size)
            references = [('naive', bench.naive, None),
                          ('ssh-cat', bench.ssh_cat, None)]
            # A full copy with each stream count, receivers ready: does a
            # zero-heavy namespace need its second stream?
            for streams in (1, 2):
                references.append(('full copy, %d stream(s)' % streams,
                                   bench.copier, streams))
            for name, func, streams in references:
                # Receivers lock their ranges: each copy's are started
                # just before it, once the previous copy's have exited.
                kwargs = {'streams': streams, 'prepared': bench.prepare(
                    src, dst, size, streams)} if streams else {}
                _, secs, cpu = bench.timed(func, src, dst, size, **kwargs)
                run(['cmp', '-n', str(size), src, dst])
                samples.setdefault((data, name), []).append(
                    {'seconds': secs, 'cpu_s_per_gb': cpu / gb})
            for changed in [int(c) for c in
                            args.changed_percent.split(',')]:
                record, pass1, cpu1 = bench.timed(
                    bench.precopy, src, dst, size, digest)
                change_chunks(src, size, changed, rnd * 100 + changed)
                # The downtime starts with the receivers running, as the
                # driver starts them before the power-off.
                _, pass2, cpu2 = bench.timed(
                    bench.copier, src, dst, size, record=record,
                    prepared=bench.prepare(src, dst, size))
                run(['cmp', '-n', str(size), src, dst])
                # Without pre-copy the copy verifies with the fastest
                # digest both hosts have, as the driver's check picks it.
                _, full, cpu_full = bench.timed(
                    bench.copier, src, dst, size,
                    prepared=bench.prepare(src, dst, size))
                run(['cmp', '-n', str(size), src, dst])
                r = {'pass1_seconds': pass1, 'pass1_cpu_s_per_gb': cpu1 / gb,
                     'downtime_precopy': pass2,
                     'precopy_cpu_s_per_gb': cpu2 / gb,
                     'downtime_full': full, 'full_cpu_s_per_gb': cpu_full / gb,
                     'ratio': pass2 / full}
                samples.setdefault((data, '%d%% changed' % changed),
                                   []).append(r)
                print('round %d  %-9s %3d%% changed: pass 1 %.2f s, '
                      'downtime %.2f s with pre-copy, %.2f s without '
                      '(%.2f)' % (rnd + 1, data, changed, pass1, pass2,
                                  full, r['ratio']), flush=True)
    for path in (src, dst):
        os.unlink(path)
    med = {'%s | %s' % k: {f: statistics.median(s[f] for s in v)
                           for f in v[0]} for k, v in samples.items()}
    return {'size_mib': args.size_mib, 'rounds': args.rounds,
            'streams': args.streams, 'digest': digest,
            'cpus': os.cpu_count(), 'fixed_cost': fixed, 'results': med,
            'samples': {'%s | %s' % k: v for k, v in samples.items()}}


def report_downtime(args, results):
    res = results['results']
    print('\nsize %d MiB, %d rounds (medians), %d streams, pre-copy digest '
          '%s, %d CPUs' % (results['size_mib'], results['rounds'],
                           results['streams'], results['digest'],
                           results['cpus']))
    print('\nfixed cost of a copy:')
    for name, secs in results['fixed_cost'].items():
        print('  %-32s %.3f s' % (name, secs))
    print('\n%-9s %-12s %8s %9s %9s %7s %9s %9s %8s %8s' % (
        'data', 'changed', 'pass 1 s', 'down pre', 'down full', 'ratio',
        'CPU/GB pre', 'CPU/GB full', 'x naive', 'x ssh-cat'))
    for key, r in sorted(res.items()):
        data, what = key.split(' | ')
        if not what.endswith('changed'):
            continue
        naive = res['%s | naive' % data]['seconds']
        ceiling = res['%s | ssh-cat' % data]['seconds']
        print('%-9s %-12s %8.2f %9.2f %9.2f %7.2f %9.2f %9.2f %8.2f %8.2f'
              % (data, what, r['pass1_seconds'], r['downtime_precopy'],
                 r['downtime_full'], r['ratio'], r['precopy_cpu_s_per_gb'],
                 r['full_cpu_s_per_gb'], naive / r['downtime_precopy'],
                 ceiling / r['downtime_precopy']))
    print()
    for key, r in sorted(res.items()):
        if not key.endswith('changed'):
            print('%-45s %6.2f s %6.0f MB/s %5.2f CPU-s/GB' % (
                key, r['seconds'], results['size_mib'] * MiB / 1e6 /
                r['seconds'], r['cpu_s_per_gb']))
    print('\ntargets: downtime ratio <= 0.25 at 1% changed, <= 1.1 at 100%')
    with open(args.out + '.json', 'w') as f:
        json.dump(results, f, indent=2)  # noqa: N324
    print('\nwrote %s.json' % args.out)


# -- A/B: the same run times several checkouts' engines and helpers --------

def checkout(rev, base):
    """The patched nova tree of rev (a git revision, or "workspace")."""
    if rev == 'workspace':
        return ROOT
    repo = os.path.dirname(HERE)
    dest = os.path.join(base, 'checkout-' + rev.replace('/', '_'))
    os.makedirs(os.path.join(dest, '.workspace'))
    print('building %s into %s' % (rev, dest), flush=True)
    archive = subprocess.Popen(['git', '-C', repo, 'archive', rev],
                               stdout=subprocess.PIPE)
    run(['tar', '-x', '-C', dest], stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait():
        raise RuntimeError('git archive %s failed' % rev)
    # The pinned sdists are already here: no download.
    cache = os.path.join(repo, '.workspace', '.cache')
    if os.path.isdir(cache):
        shutil.copytree(cache, os.path.join(dest, '.workspace', '.cache'))
    # That revision's own tool applies that revision's series.
    run([sys.executable, os.path.join(dest, 'tools', 'workspace'),
         '--root', dest, 'build', '--no-venv'], stdout=subprocess.DEVNULL)
    return os.path.join(dest, '.workspace', 'nova')


class EngineProcess(object):
    """One checkout's copy engine, imported in a process of its own.

    The process imports the engine before anything is timed, then runs
    one copy per request; it reports its own CPU time and that of the
    processes it reaped (ssh and the local helper).
    """

    def __init__(self, name, tree, bench):
        self.name = name
        self.tree = tree
        self.helper = ['env', 'PYTHONPATH=' + os.pathsep.join(
            [tree] + bench.args.pythonpath), sys.executable, ON_FILES,
            bench.listing]
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--engine-worker',
             tree], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        # Its first line: where it imported the engine from, once ready,
        # and whether the engine can start its receivers ahead.
        hello = json.loads(self.proc.stdout.readline())
        self.engine, self.can_prepare = hello['engine'], hello['ready']

    def _ask(self, request):
        self.proc.stdin.write(json.dumps(request) + '\n')  # noqa: N324
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())  # noqa: N324
        if 'error' in reply:
            raise RuntimeError('%s: %s' % (self.name, reply['error']))
        return reply

    def copy(self, src, dst, size, streams, ssh_args, ready=False):
        return self._ask({'src': src, 'dst': dst, 'size': size,
                          'streams': streams, 'helper': self.helper,
                          'ssh_args': ssh_args, 'ready': ready})

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait()


def engine_worker(tree):
    """The loop of an EngineProcess, run with --engine-worker TREE."""
    sys.path.insert(0, tree)
    from nova.virt.libvirt import vpmem_copy
    if not vpmem_copy.__file__.startswith(tree):
        sys.exit('%s imported from %s' % (tree, vpmem_copy.__file__))
    print(json.dumps({'engine': vpmem_copy.__file__,  # noqa: N324
                      'ready': hasattr(vpmem_copy, 'prepare_copy')}),
          flush=True)
    for line in sys.stdin:
        req = json.loads(line)  # noqa: N324
        cpu0 = cpu_self()
        try:
            pair, kwargs = engine_call(vpmem_copy, req['src'], req['dst'],
                                       req['size'])
            transport = dict(host=HOST, streams=req['streams'],
                             cipher=CIPHER, helper=req['helper'],
                             root_helper=(), ssh_args=req['ssh_args'])
            if req['ready']:
                # As the driver does before the power-off; not timed.
                kwargs['prepared'] = vpmem_copy.prepare_copy(
                    [pair], **transport, **kwargs)
                time.sleep(1)
            t0 = time.monotonic()
            out = vpmem_copy.copy_namespaces(
                [pair], verify=True, **transport, **kwargs)
            reply = {'cpu': cpu_self() - cpu0, 'digest': out[0]['digest'],
                     'seconds': time.monotonic() - t0}
        except Exception as exc:
            reply = {'error': '%s: %s' % (type(exc).__name__, exc)}
        print(json.dumps(reply), flush=True)  # noqa: N324


def cpu_self():
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def run_ab(args, bench, workdir):
    size = args.size_mib * MiB
    engines = []
    # The checkouts go to disk, not to the namespaces' tmpfs.
    trees = tempfile.mkdtemp(prefix='vpmem-bench-ab-')
    try:
        for rev in args.ab:
            engines.append(EngineProcess(rev, checkout(rev, trees), bench))
            print('%s: engine %s' % (rev, engines[-1].engine), flush=True)
            if args.ready and not engines[-1].can_prepare:
                sys.exit('%s: its engine cannot start receivers ahead '
                         '(no prepare_copy); --ready needs fe78a11 or '
                         'later' % rev)
        return _run_ab(args, bench, workdir, size, engines)
    finally:
        for engine in engines:
            engine.stop()
        shutil.rmtree(trees)


def _run_ab(args, bench, workdir, size, engines):
    dst = os.path.join(workdir, 'dst')
    make_source(dst, size, 0, 0)
    bench.allow(dst, size, dest=True)
    datasets = {}
    for zero in [int(z) for z in args.zero_percent.split(',')]:
        path = os.path.join(workdir, 'src-%d' % zero)
        make_source(path, size, zero / 100, 42)
        bench.allow(path, size)
        datasets['%d%% zero' % zero] = path
    bench.dirt = next(iter(datasets.values()))
    gb = size / 1e9
    samples = {}
    for rnd in range(args.rounds):
        # Rotate the order so that no checkout always runs first.
        order = engines[rnd % len(engines):] + \
            engines[:rnd % len(engines)]
        for data, src in datasets.items():
            ssh_cat = bench.ssh_cat_ready if args.ready else bench.ssh_cat
            runs = [('ssh-cat', lambda: ssh_cat(src, dst, size), None)]
            runs += [(e.name, lambda e=e: e.copy(
                src, dst, size, args.streams, bench.sshd.ssh_args,
                ready=args.ready), e) for e in order]
            for name, func, engine in runs:
                prepare_dest(dst, size, True, bench.dirt)
                run(['sync'])
                sshd0 = bench.sshd.cpu()
                mine0 = cpu_self()
                t0 = time.monotonic()
                out = func() or {}
                # An engine times its copy itself, without the request's
                # round trip; a ready run from the point it was ready.
                secs = out.get('seconds', time.monotonic() - t0)
                bench.sshd.wait_idle()
                cpu = bench.sshd.cpu() - sshd0
                # ssh-cat's processes are this one's children; an
                # engine's are its worker's, which reports them.
                cpu += out['cpu'] if engine else cpu_self() - mine0
                run(['cmp', '-n', str(size), src, dst])
                r = {'round': rnd + 1, 'seconds': secs,
                     'mb_s': size / secs / 1e6, 'cpu_s_per_gb': cpu / gb}
                samples.setdefault((data, name), []).append(r)
                print('round %d  %-9s %-24s %7.0f MB/s %5.2f CPU-s/GB%s'
                      % (rnd + 1, data, name, r['mb_s'],
                         r['cpu_s_per_gb'], '  digest ' + out['digest']
                         if engine else ''), flush=True)
    return {'size_mib': args.size_mib, 'rounds': args.rounds,
            'streams': args.streams, 'cpus': os.cpu_count(),
            'checkouts': args.ab, 'ready': args.ready,
            'results': {'%s | %s' % k: summarize(v)
                        for k, v in samples.items()},
            'samples': {'%s | %s' % k: v for k, v in samples.items()}}


def paired(samples, key, base):
    """Round-by-round MB/s ratios of key to base: median, min, max.

    Runs of one round are seconds apart, so pairing them cancels most of
    what a busy machine does to both.
    """
    ratios = [a['mb_s'] / b['mb_s']
              for a, b in zip(samples[key], samples[base])]
    return statistics.median(ratios), min(ratios), max(ratios)


def report_ab(args, results):
    res = results['results']
    samples = results['samples']
    first = results['checkouts'][0]
    print('\nsize %d MiB, %d rounds (medians), %d streams, %d CPUs%s' % (
        results['size_mib'], results['rounds'], results['streams'],
        results['cpus'], ', timed once ready (logged in, receivers '
        'started)' if results.get('ready') else ''))
    print('ratios are medians of round-by-round ratios, [min, max]')
    print('%-9s %-12s %6s %8s %-20s %-20s %s' % (
        'data', 'variant', 'MB/s', 'CPU-s/GB', 'x ssh-cat',
        'x ' + first, 'MB/s by round'))
    for data in sorted({k.split(' | ')[0] for k in res}):
        ceiling = '%s | ssh-cat' % data
        base = '%s | %s' % (data, first)
        for name in ['ssh-cat'] + results['checkouts']:
            key = '%s | %s' % (data, name)
            print('%-9s %-12s %6.0f %8.2f %-20s %-20s %s' % (
                data, name, res[key]['mb_s'], res[key]['cpu_s_per_gb'],
                '%.2f [%.2f, %.2f]' % paired(samples, key, ceiling),
                '%.2f [%.2f, %.2f]' % paired(samples, key, base),
                ' '.join('%.0f' % s['mb_s'] for s in samples[key])))
    with open(args.out + '.json', 'w') as f:
        json.dump(results, f, indent=2)  # noqa: N324
    print('\nwrote %s.json' % args.out)


if __name__ == '__main__':
    if sys.argv[1:2] == ['--engine-worker']:
        engine_worker(sys.argv[2])
    else:
        main()
