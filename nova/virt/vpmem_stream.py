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

"""The formats the vPMEM copy shares between nova-compute and its helper.

The stream format is shared by the root helper (``nova.cmd.vpmem_copy``),
which writes and reads the stream, and the copy engine
(``nova.virt.libvirt.vpmem_copy``), which builds the record of a pre-copy.
The owners file is written by nova-compute (``nova.virt.libvirt.
vpmem_owners``) and read by the helper. The helper runs as root and imports
this module, so it depends on the standard library only.
"""

import json
import struct

# The stream starts with MAGIC and STREAM_HDR: the digest of DATA records,
# the digest of SAME records (empty without a record), range offset, range
# length and chunk size. Each record is RECORD_HDR: kind, offset (relative
# to the range), length, digest; DATA records are followed by ``length``
# bytes. SAME records carry only the digest of a chunk the destination
# already holds. END carries the number of bytes covered in ``offset`` and
# the number of chunk records in ``length``.
PROTOCOL = 3
MAGIC = b'NVPMCP%d\n' % PROTOCOL
STREAM_HDR = struct.Struct('<16s16sQQI')
DIGEST_SIZE = 32
RECORD_HDR = struct.Struct('<BQI%ds' % DIGEST_SIZE)
DATA, ZERO, SAME, END = 1, 2, 3, 255
# The record of an earlier pass (send --with-record, on stdin): RECORD_MAGIC,
# a STREAM_HDR naming the record's cryptographic digest, its fast digest
# (may be empty) and the range it covers, then per chunk of the range the
# two digests, all zero bytes for a chunk it has none for.
RECORD_MAGIC = b'NVPMRC%d\n' % PROTOCOL
NO_DIGEST = bytes(DIGEST_SIZE)

DEFAULT_CHUNK = 1024 * 1024
# Bounds on a chunk: a page at least, so that neither the per-chunk work nor
# a record (two digests per chunk) can be made to grow without limit.
MIN_CHUNK = 4096
MAX_CHUNK = 64 * 1024 * 1024

# The digests a SAME record may rely on. The guest controls the data, so two
# chunks with the same digest must not be craftable: 256-bit cryptographic
# digests only.
CRYPTO_DIGESTS = ('blake3', 'sha256', 'blake2b')

# The owners file of a host, OWNERS_FILE % [DEFAULT] host in [DEFAULT]
# state_path: {"owners": {NAME: OWNER}, "incoming": {NAME: UUID}}. OWNER,
# whose data the namespace may hold, is an instance UUID or ZEROED.
# "incoming" holds the namespaces this host gave to an instance that moves
# here, until it runs here: the only ones a copy may write. The first
# format of the file was the "owners" mapping alone.
OWNERS_FILE = 'vpmem-owners-%s.json'
ZEROED = 'zeroed'
# A few KiB on any real host; the helper reads no more than this.
MAX_OWNERS_FILE_SIZE = 1024 * 1024


def parse_owners(text):
    """Return the (owners, incoming) mappings of an owners file's text.

    :raises: ValueError if the text is not an owners file
    """
    data = json.loads(text)  # noqa: N324 the helper imports no oslo
    if isinstance(data, dict) and not (
            set(data) <= {'owners', 'incoming'} and
            isinstance(data.get('owners'), dict)):
        data = {'owners': data}
    if not isinstance(data, dict):
        raise ValueError('an owners file holds a JSON object')
    mappings = data.get('owners'), data.get('incoming', {})
    for mapping in mappings:
        if not (isinstance(mapping, dict) and
                all(isinstance(v, str) for v in mapping.values())):
            raise ValueError('an owners file maps names to strings')
    return mappings
