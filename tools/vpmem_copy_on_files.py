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

"""A STAND-IN entry point of nova-vpmem-copy, for the benchmark only.

There is no PMEM hardware here, and the shipped helper only touches the
device-DAX namespaces that ndctl lists and nova names. This runs the helper
of the nova tree on PYTHONPATH with the regular files of a JSON listing
(``[{"path": ..., "size": ...}]``) as the host's namespaces instead.

    vpmem_copy_on_files.py LISTING SUBCOMMAND [ARGS...]
"""

import json
import os
import sys


def main():
    listing, args = sys.argv[1], sys.argv[2:]
    # The helpers of older revisions (the benchmark's A/B mode) read their
    # test allow-list from this variable.
    os.environ['NOVA_VPMEM_COPY_NAMESPACES'] = listing
    from nova.cmd import vpmem_copy as helper
    with open(listing) as f:
        files = {e['path']: {'size': e['size'], 'align': 4096}
                 for e in json.load(f)}  # noqa: N324
    helper.known_namespaces = lambda: files
    return helper.main(args)


if __name__ == '__main__':
    sys.exit(main())
