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

"""The forced command of the vPMEM copy's own ssh identity.

On every compute host, the copy's key logs in as the nova user with an
authorized_keys line like::

    restrict,command="nova-vpmem-copy-gate RUNNER..." KEY

where RUNNER is the command that runs the helper as root, such as ``sudo -n
/usr/bin/python3 -I -m nova.cmd.vpmem_copy``. The gate runs the
``receive``, ``zero`` or ``check`` of ``nova-vpmem-copy`` that the client
asked for (ssh's ``SSH_ORIGINAL_COMMAND``) with RUNNER, after checking its
arguments with the helper's own parser; it
refuses anything else, and never reads a namespace. It runs as the login
user, not as root, and is not part of the root helper.
"""

import os
import shlex
import sys

from nova.cmd import vpmem_copy
from nova.virt import vpmem_stream as stream

# What the copy's own identity may run on the other host: write, zero and
# check a namespace; never read one.
GATE_COMMANDS = ('receive', 'zero', 'check')


def gate_argv(command, runner):
    """The argv that runs what an ssh client asked for, or refuse it.

    :param command: the client's command (``SSH_ORIGINAL_COMMAND``)
    :param runner: argv prefix that runs the helper as root
    """
    words = shlex.split(command or '')
    # The client's own root helper and helper come first: RUNNER replaces
    # them.
    start = next((i for i, word in enumerate(words)
                  if word in GATE_COMMANDS or word == 'send' or
                  word.startswith(('--config-', '--instance'))), None)
    parsed = None
    if start is not None:
        try:
            parsed = vpmem_copy._parser().parse_args(words[start:])
        except SystemExit:
            raise stream.HelperError(stream.EXIT_USAGE,
                                     'invalid arguments in %r' % command)
    if (parsed is None or parsed.command not in GATE_COMMANDS or
            getattr(parsed, 'sources', False)):
        raise stream.HelperError(
            stream.EXIT_DENIED, 'this key only runs nova-vpmem-copy %s, not '
            '%r' % ('/'.join(GATE_COMMANDS), command))
    return list(runner) + words[start:]


def main(argv=None):
    runner = sys.argv[1:] if argv is None else argv
    try:
        if not runner:
            raise stream.HelperError(stream.EXIT_USAGE, 'give the command '
                                     'that runs nova-vpmem-copy as root')
        argv = gate_argv(os.environ.get('SSH_ORIGINAL_COMMAND'), runner)
    except stream.HelperError as e:
        sys.stderr.write('nova-vpmem-copy-gate: %s\n' % e)
        return e.code
    os.execvp(argv[0], argv)


if __name__ == '__main__':
    sys.exit(main())
