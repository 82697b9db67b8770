#!/usr/bin/env python3
#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Could the vPMEM copy stream a namespace through oslo.privsep? Measured.

nova runs its root actions through a privsep daemon, whose calls and
results travel its unix socket as msgpack messages; it cannot pass a file
descriptor. Streaming a namespace through it means one call per chunk that
returns the chunk's bytes, which nova-compute writes into the pipe to ssh.
This times that against what the copy does: one root-started process writes
the data into the pipe itself. Both read the same file (page cache) into a
pipe whose reader discards it, in interleaved rounds; CPU counts the caller
and the daemon, or the writer, never the reader.

    .venv/bin/python tools/bench_privsep_stream.py [--size-mib 1024]
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from oslo_privsep import capabilities
from oslo_privsep import priv_context

CHUNK = 1024 * 1024
ctx = priv_context.PrivContext(
    __name__, cfg_section='bench_privsep', pypath=__name__ + '.ctx',
    capabilities=[capabilities.CAP_DAC_READ_SEARCH])

# The copy's way: a process writes the file into its stdout in chunks.
_WRITER = '''
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
buf = bytearray(int(sys.argv[2]))
while True:
    n = os.readv(fd, [buf])
    if not n:
        break
    view = memoryview(buf)[:n]
    while view:
        view = view[os.write(1, view):]
'''


@ctx.entrypoint
def read_chunk(path, offset, size):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(size)


def _proc_cpu(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _daemon_pid():
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/stat' % pid) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except OSError:
            continue
        if ppid == me and int(pid) != me:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if b'python' in f.read():
                    return int(pid)
    raise RuntimeError('no privsep daemon found')


def _sink():
    return subprocess.Popen(['cat'], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)


def through_privsep(path, size, daemon):
    sink = _sink()
    cpu0, dcpu0, start = _self_cpu(), _proc_cpu(daemon), time.monotonic()
    for offset in range(0, size, CHUNK):
        sink.stdin.write(read_chunk(path, offset, CHUNK))
    sink.stdin.flush()
    elapsed = time.monotonic() - start
    cpu = _self_cpu() - cpu0 + _proc_cpu(daemon) - dcpu0
    sink.stdin.close()
    sink.wait()
    return elapsed, cpu


def through_a_pipe(path, size):
    sink = _sink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run([sys.executable, '-c', _WRITER, path, str(CHUNK)],
                   stdout=sink.stdin, check=True)
    elapsed = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink.stdin.close()
    sink.wait()
    return elapsed, (after.ru_utime + after.ru_stime -
                     before.ru_utime - before.ru_stime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * CHUNK
    with tempfile.NamedTemporaryFile(prefix='bench-privsep-') as data:
        print('writing %d MiB of random data' % args.size_mib, flush=True)
        for _ in range(args.size_mib):
            data.write(os.urandom(CHUNK))
        data.flush()
        # Fork: the daemon privsep-helper would start, without sudo (the
        # channel and its messages are the same).
        ctx.start(method=priv_context.Method.FORK)
        daemon = _daemon_pid()
        results = {'privsep': [], 'pipe': []}
        for n in range(args.rounds):
            for name in results:
                if name == 'privsep':
                    t, cpu = through_privsep(data.name, size, daemon)
                else:
                    t, cpu = through_a_pipe(data.name, size)
                results[name].append((size / t / 1e6, cpu / (size / 1e9)))
                print('round %d %-8s %5.0f MB/s %5.2f CPU-s/GB' % (
                    n + 1, name, *results[name][-1]), flush=True)
    rate = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
    for name in results:
        print('median %-8s %5.0f MB/s %5.2f CPU-s/GB' % (name, rate[name],
                                                          cpu[name]))
    print('privsep/pipe: %.2fx the rate, %.2fx the CPU per GB' % (
        rate['privsep'] / rate['pipe'], cpu['privsep'] / cpu['pipe']))


if __name__ == '__main__':
    main()
