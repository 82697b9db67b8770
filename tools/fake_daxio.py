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

"""A STAND-IN for PMDK's daxio, for tests only. It is not daxio.

The real daxio refuses regular files (one side must be a device-DAX
character device) and the test machines have no /dev/dax*. This script has
daxio's command line (-i/--input, -o/--output, -l/--len, -k/--skip,
-s/--seek, -z/--zero) and its stream behaviour, including the trap that
matters for the vPMEM copy: it exits 0 when its input ends before --len
bytes, printing only a message on stderr. It works on regular files and is
used only by the test of the naive daxio pipeline and by the benchmark.
"""

import argparse
import os
import sys


def main():
    parser = argparse.ArgumentParser(prog='daxio')
    parser.add_argument('-i', '--input')
    parser.add_argument('-o', '--output')
    parser.add_argument('-l', '--len', type=int)
    parser.add_argument('-k', '--skip', type=int, default=0)
    parser.add_argument('-s', '--seek', type=int, default=0)
    parser.add_argument('-z', '--zero', action='store_true')
    args = parser.parse_args()
    if args.input and not os.path.exists(args.input):
        sys.exit("daxio: failed to open '%s'" % args.input)
    if args.output and not os.path.exists(args.output):
        # Like daxio, a missing output is created before anything else.
        open(args.output, 'wb').close()
        sys.exit('daxio: neither input nor output is device dax')
    length = args.len
    if length is None:
        length = os.path.getsize(args.output or args.input)
    if args.zero:
        with open(args.output, 'r+b') as out:
            out.seek(args.seek)
            out.write(bytes(length))
        return
    src = open(args.input, 'rb') if args.input else sys.stdin.buffer
    dst = open(args.output, 'r+b') if args.output else sys.stdout.buffer
    if args.input:
        src.seek(args.skip)
    if args.output:
        dst.seek(args.seek)
    copied = 0
    while copied < length:
        data = src.read(min(1 << 20, length - copied))
        if not data:
            break
        dst.write(data)
        copied += len(data)
    dst.flush()
    if copied < length:
        sys.stderr.write('daxio: requested size %d larger than source\n'
                         % length)
    sys.stderr.write('daxio: copied %d bytes to device "%s"\n'
                     % (copied, args.output or 'stdout'))


if __name__ == '__main__':
    main()
