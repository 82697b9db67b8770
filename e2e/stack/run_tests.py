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

"""The ``cloud`` test group: one bring-up, the tests, and a tear-down.

The tests are the rolling upgrade, the tour, nova-compute killed mid-move
(``test_crash``), and upstream Tempest's compute
API tests (``tempest``), in that order; arguments pick some of them by
unittest name or as ``tempest``. Prints the wall time and the machine's
peak memory in use while the group ran, and ends with "N passed, N failed,
N skipped" (each Tempest test counts as one).
"""

import collections
import sys
import threading
import time
import unittest

from e2e.stack import base
from e2e.stack import cli
from e2e.stack import tempest

# The upgrade first: its last step retires the unpatched compute, after
# which the copy is allowed again for the tour. Upstream Tempest last, on
# the two patched computes.
MODULES = ('e2e.stack.test_upgrade', 'e2e.stack.test_cloud',
           'e2e.stack.test_crash')
TEMPEST = 'tempest'


class MemorySampler(threading.Thread):
    """Peak of MemTotal - MemAvailable, sampled every second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.done = threading.Event()

    @staticmethod
    def in_use():
        info = {}
        with open('/proc/meminfo') as f:
            for line in f:
                key, value = line.split(':')
                info[key] = int(value.split()[0]) * 1024
        return info['MemTotal'] - info['MemAvailable']

    def run(self):
        while not self.done.wait(1):
            self.peak = max(self.peak, self.in_use())


def _summary(counts):
    return '%d passed, %d failed, %d skipped' % (
        counts['passed'], counts['failed'], counts['skipped'])


def _run_unittest(modules):
    suite = unittest.defaultTestLoader.loadTestsFromNames(modules)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout,
                                     failfast=False).run(suite)
    failed = len(result.failures) + len(result.errors)
    counts = collections.Counter(failed=failed, skipped=len(result.skipped),
                                 passed=result.testsRun - failed -
                                 len(result.skipped))
    print('the upgrade and the tour: %s' % _summary(counts), flush=True)
    return counts


def _run_tempest():
    """Tempest's own counts, so that each of its tests counts as one."""
    try:
        totals = tempest.run()
    except Exception as e:
        base.say('tempest did not run: %s' % e)
        return collections.Counter(failed=1)
    counts = collections.Counter(passed=totals.get('Passed', 0),
                                 failed=totals.get('Failed', 0),
                                 skipped=totals.get('Skipped', 0))
    print('tempest: %s' % _summary(counts), flush=True)
    return counts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    started = time.monotonic()
    sampler = MemorySampler()
    baseline = sampler.in_use()
    sampler.start()
    counts = collections.Counter()
    names = argv or MODULES + (TEMPEST,)
    modules = [name for name in names if name != TEMPEST]
    try:
        cli.up(old_compute=any('test_upgrade' in name for name in names))
        base.say('cloud up after %.0f s' % (time.monotonic() - started))
        if modules:
            counts.update(_run_unittest(modules))
        if TEMPEST in names:
            counts.update(_run_tempest())
    except Exception as e:
        base.say('the cloud did not come up: %s' % e)
        counts['failed'] += 1
    finally:
        cli.down()
        sampler.done.set()
    print('wall time %.0f s; peak memory in use %.1f GiB (%.1f GiB before '
          'the group)' % (time.monotonic() - started, sampler.peak / 2**30,
                          baseline / 2**30))
    print(_summary(counts))
    return 1 if counts['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
