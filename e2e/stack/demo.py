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

"""The main demo: a real guest reads its PMEM back after every move.

Brings the real two-host cloud up (``tools/cloud up``), runs the steps of
``scenario.Tour`` through the real ``openstack`` CLI, prints the guest's own
console line after each step, then a summary table, and tears the cloud
down (``--keep`` leaves it up). Exits 0 only if every step held.
"""

import argparse
import sys
import time

from e2e.stack import base
from e2e.stack import cli
from e2e.stack import scenario


def run_tour():
    rows = []
    tour = scenario.Tour('vpmem-demo')
    for step_fn in tour.steps():
        started = time.monotonic()
        try:
            step = step_fn()
        except Exception as e:      # the table says what broke
            step = scenario.Step(step_fn.__name__, False, str(e)[-300:],
                                 None)
        rows.append((step, time.monotonic() - started))
        print('\n== %s: %s (%.0f s)\n   %s\n   guest: %s' % (
            'PASS' if step.ok else 'FAIL', step.name,
            time.monotonic() - started, step.detail,
            step.line['raw'] if step.line else '-'), flush=True)
        if not step.ok:
            break
    return rows


def print_table(rows):
    print('\n%-46s %-4s %6s  %s' % ('step', '', 'time', 'what the guest saw'))
    for step, seconds in rows:
        print('%-46s %-4s %5.0fs  %s' % (
            step.name[:46], 'PASS' if step.ok else 'FAIL', seconds,
            scenario.format_line(step.line)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--keep', action='store_true',
                        help='leave the cloud up at the end')
    args = parser.parse_args(argv)
    rows = []
    try:
        cli.up()
        rows = run_tour()
    finally:
        if not args.keep:
            cli.down()
    print_table(rows)
    ok = rows and all(step.ok for step, _ in rows) and len(rows) == len(
        scenario.Tour().steps())
    base.say('demo %s' % ('PASSED' if ok else 'FAILED'))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
