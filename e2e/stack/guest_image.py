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

"""A tiny guest image that reports what its vPMEM holds, for Nova to boot.

Nova's libvirt driver (``virt_type = qemu``) boots it AKI/ARI/AMI style:
a stock Debian kernel, an initramfs (busybox-static, the NVDIMM and virtio
modules, ``ndctl`` and ``daxio``) and a small raw root disk that only holds
a marker. Its ``/init`` runs on every boot:

* it reads the server's UUID from SMBIOS (Nova sets it) and the marker from
  the first sector of ``/dev/vda``. The root disk goes wherever the server
  goes (cold migration copies it); the NVDIMM's data follows only when Nova
  copies it.
* first boot (no marker): it writes new namespace labels, creates one
  device-DAX namespace with ``ndctl`` (the guest kernel writes the labels
  into the NVDIMM's label area), hashes the pattern derived from the
  server's UUID (``pattern_sha256`` computes the same digest on the host),
  writes the pattern into the namespace with ``daxio``, and, once the
  namespace's digest matches, writes the marker (with that digest) to vda.
* later boots never initialise anything: they only look.
* every boot hashes the namespace (read with ``daxio``), prints one line to
  the serial console (``LINE_FORMAT``; ``parse_line`` reads it back), then
  idles until it is powered off.

``pattern=ok`` means the namespace's data equals the pattern the first boot
wrote for this server. The digest covers the whole namespace up to
DIGEST_MAX_MIB; a larger namespace's line says ``sha256_mib=N``. A guest
whose root disk was moved without its NVDIMM data finds no device-DAX
namespace (the labels are gone with the data): ``mode=raw`` (or ``none``),
``sha256=-`` and ``pattern=bad``; it never initialises the NVDIMM again.

``python -m e2e.stack.guest_image --selftest`` boots the image with plain
QEMU (TCG) four times: first boot, reboot, after a copy onto a larger
NVDIMM (with the label area moved to its end), and with a zeroed NVDIMM.
"""

import argparse
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from e2e.dax import guest as dax_guest
from e2e.stack import base

IMAGE = base.STATE / 'image'
MIB = 1024 * 1024
LABEL_MIB = 2
DISK_BYTES = MIB
MODULES = ('nfit', 'libnvdimm', 'nd_pmem', 'nd_btt', 'device_dax',
           'dax_pmem', 'virtio_pci', 'virtio_blk')
BINARIES = ('/usr/bin/ndctl', '/usr/bin/daxio')
# What Nova's libvirt driver passes to a kernel+ramdisk image.
CMDLINE = 'root=/dev/vda console=tty0 console=ttyS0 console=hvc0'
LINE_PREFIX = 'VPMEM-GUEST '
# One line per boot. size is what ndctl says: for device-DAX the usable
# bytes (262144000 of a 256 MiB namespace), which the digest covers; for
# raw the whole region. uuid is the namespace's (- when it has none).
LINE_FORMAT = ('VPMEM-GUEST uuid=<namespace uuid|-> mode=<devdax|raw|none|...>'
               ' size=<namespace bytes, as ndctl says> region=<region bytes>'
               ' sha256=<digest of the namespace data|-> pattern=<ok|bad|->'
               ' first_boot=<yes|no> server=<server uuid>'
               '[ sha256_mib=<MiB the digest covers, if not all>]'
               ' boot=<random id of this boot>')
MARKER = 'VPMEM-GUEST-MARKER'
# The most of a namespace the pattern and the digest cover (about 8 s of
# sha256 per 256 MiB under TCG).
DIGEST_MAX_MIB = 256

# Runs as PID 1 on every boot (busybox sh). Keep the VPMEM-GUEST line in
# step with LINE_FORMAT and the pattern in step with pattern_sha256().
INIT = r'''#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp
# Nova's command line ends with console=hvc0, which this guest does not
# have, so /dev/console may be the screen: talk to the serial port, which
# is what Nova logs (console.log).
[ -c /dev/ttyS0 ] && exec </dev/null >/dev/ttyS0 2>&1
say() { read up rest </proc/uptime; echo "vpmem-guest: [$up s] $*"; }
idle() { while :; do sleep 3600; done; }
say "init started; consoles: $(cat /sys/class/tty/console/active)"
for m in $(cat /modules.order); do insmod "$m" || say "insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
cat /sys/bus/nd/devices/ndbus*/wait_probe >/dev/null 2>&1
server=$(tr A-F a-f 2>/dev/null </sys/class/dmi/id/product_uuid)
server=${server:--}

# The marker: MARKER SERVER_UUID PATTERN_SHA256 NAMESPACE_BYTES. One of
# another server (a snapshot of it booted as a new server) does not count.
set -f
set -- $(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
set +f
if [ "$1" = MARKER_NAME ] && [ "$2" = "$server" ]; then
    first=no; mark_server=$2; mark_sha=$3; mark_size=$4
else
    first=yes
fi
[ -b /dev/vda ] || say "no /dev/vda"

region=""; region_size=0
for r in /sys/bus/nd/devices/region*; do
    [ -e "$r/size" ] || continue
    region=${r##*/}; region_size=$(cat "$r/size"); break
done

nd() {
    ndctl "$@" >/tmp/ndctl.log 2>&1 \
        || { say "ndctl $* failed:"; cat /tmp/ndctl.log; return 1; }
}

# Sets mode, ns_uuid, ns_size, chardev, blockdev from ndctl (first
# namespace of the region).
namespace() {
    ndctl list -N -r "$region" 2>/dev/null | tr -d ' \t\n"[]{}' \
        | tr ',' '\n' >/tmp/ns
    get() { sed -n "s/^$1://p" /tmp/ns | head -n 1; }
    mode=$(get mode); ns_uuid=$(get uuid); ns_size=$(get size)
    chardev=$(get chardev); blockdev=$(get blockdev)
    mode=${mode:-none}; ns_uuid=${ns_uuid:--}; ns_size=${ns_size:-0}
}

# The pattern: MiB number i is a 64-byte header line, then the sha256 hex
# digest of the server UUID repeated to the end of the MiB; $1 bytes.
pattern() {
    printf %s "$(printf %s "$server" | sha256sum | cut -c 1-64)" >/tmp/p
    n=0
    while [ $n -lt 14 ]; do
        cat /tmp/p /tmp/p >/tmp/q; mv /tmp/q /tmp/p; n=$((n + 1))
    done
    head -c $((1048576 - 64)) /tmp/p >/tmp/rest; rm /tmp/p
    i=0
    while [ $((i * 1048576)) -lt "$1" ]; do
        left=$(($1 - i * 1048576))
        if [ $left -ge 1048576 ]; then
            printf '%-63s\n' "VPMEM-PATTERN $server MiB $i"
            cat /tmp/rest
        else
            # busybox head is slow: only for a partial last MiB
            { printf '%-63s\n' "VPMEM-PATTERN $server MiB $i"
              cat /tmp/rest; } | head -c $left
        fi
        i=$((i + 1))
    done
}

# How much of the namespace the pattern and the digest cover: all of it
# up to DIGEST_MAX_MIB (the line says sha256_mib=N when it is less).
extent() {
    extent=$ns_size; partial=""
    if [ "$extent" -gt $((DIGEST_MAX_MIB * 1048576)) ]; then
        extent=$((DIGEST_MAX_MIB * 1048576))
        partial=" sha256_mib=DIGEST_MAX_MIB"
    fi
}

if [ $first = yes ] && [ -n "$region" ]; then
    dimm=$(cut -d , -f 1 "/sys/bus/nd/devices/$region/mapping0")
    say "first boot: one device-DAX namespace on $region ($dimm)"
    nd disable-region "$region" && nd init-labels -f "$dimm"
    nd enable-region "$region" && nd create-namespace -m devdax -r "$region"
    namespace
    if [ "$mode" = devdax ] && [ -c "/dev/$chardev" ]; then
        extent
        # tee is too slow here: make the pattern twice, to hash and write
        say "hashing the pattern of server $server: $extent bytes"
        mark_sha=$(pattern $extent | sha256sum | cut -c 1-64)
        say "writing it to /dev/$chardev"
        pattern $extent \
            | daxio -o "/dev/$chardev" -l $extent 2>/tmp/daxio.log \
            || { say "daxio write failed"; cat /tmp/daxio.log; }
        mark_server=$server; mark_size=$ns_size
    fi
fi

namespace
digest=-; pattern=-; partial=""
if [ "$mode" = devdax ] && [ -c "/dev/$chardev" ]; then
    extent
    say "hashing /dev/$chardev: $extent bytes"
    digest=$(daxio -i "/dev/$chardev" -l $extent 2>/tmp/daxio.log \
             | sha256sum | cut -c 1-64)
fi
if [ -n "$mark_sha" ]; then
    if [ "$mode" = devdax ] && [ "$mark_server" = "$server" ] \
            && [ "$mark_sha" = "$digest" ] && [ "$mark_size" = "$ns_size" ]
    then
        pattern=ok
    else
        pattern=bad
    fi
fi
if [ $first = yes ] && [ "$pattern" = ok ]; then
    printf '%s %s %s %s\n' MARKER_NAME "$server" "$mark_sha" "$ns_size" \
        | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null \
        || say "writing the marker failed"
    sync
fi
# No kernel message on the console in the middle of the line.
read level rest </proc/sys/kernel/printk
echo 1 >/proc/sys/kernel/printk
boot=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
echo "VPMEM-GUEST uuid=$ns_uuid mode=$mode size=$ns_size" \
     "region=$region_size sha256=$digest pattern=$pattern" \
     "first_boot=$first server=$server$partial boot=$boot"
echo "$level" >/proc/sys/kernel/printk
say "idle"
idle
'''.replace('MARKER_NAME', MARKER).replace(
    'DIGEST_MAX_MIB', str(DIGEST_MAX_MIB))


def say(text):
    print('guest-image: %s' % text, flush=True)


def _libraries(binaries):
    """The shared libraries (and the loader) the binaries need."""
    found = []
    for binary in binaries:
        out = subprocess.run(['ldd', binary], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = re.search(r'(/\S+) \(0x', line)
            if match and match.group(1) not in found:
                found.append(match.group(1))
    return found


def _stamp(version):
    source = pathlib.Path(__file__).read_bytes()
    return hashlib.sha256(source + version.encode()).hexdigest()


def _build_initramfs(tree, version, target):
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        top = pathlib.Path(tmp) / 'initramfs'
        for sub in ('bin', 'proc', 'sys', 'dev', 'tmp', 'lib/modules'):
            (top / sub).mkdir(parents=True)
        shutil.copy('/bin/busybox', top / 'bin' / 'busybox')
        order = []
        for path in dax_guest._module_files(tree, version, MODULES):
            name = os.path.basename(path)
            shutil.copy(path, top / 'lib' / 'modules' / name)
            order.append('/lib/modules/%s' % name)
        (top / 'modules.order').write_text('\n'.join(order) + '\n')
        for path in list(BINARIES) + _libraries(BINARIES):
            dest = top / ('bin/' + os.path.basename(path)
                          if path in BINARIES else path.lstrip('/'))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest)
        (top / 'init').write_text(INIT)
        (top / 'init').chmod(0o755)
        names = subprocess.run(['find', '.'], cwd=top, check=True,
                               capture_output=True).stdout
        with open(str(target) + '.tmp', 'wb') as out:
            cpio = subprocess.Popen(['cpio', '-o', '-H', 'newc', '--quiet'],
                                    cwd=top, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            gz = subprocess.Popen(['gzip', '-9', '-n'], stdin=cpio.stdout,
                                  stdout=out)
            cpio.stdout.close()
            cpio.communicate(names)
            gz.wait()
            if cpio.returncode or gz.returncode:
                msg = 'cpio or gzip failed'
                raise RuntimeError(msg)
        os.replace(str(target) + '.tmp', target)
    return len(order)


def build(cache=IMAGE):
    """Build (or reuse) the image; return {'kernel', 'ramdisk', 'disk'}.

    The kernel package is downloaded once and shared with e2e.dax.guest.
    The root disk is DISK_BYTES of zeros (no marker: never booted).
    """
    cache = pathlib.Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for tool in BINARIES + ('/bin/busybox',):
        if not os.path.exists(tool):
            msg = '%s is missing: run tools/setup-host' % tool
            raise RuntimeError(msg)
    dax_guest.CACHE.mkdir(parents=True, exist_ok=True)
    tree, version = dax_guest._fetch_kernel(dax_guest.CACHE)
    paths = {'kernel': cache / 'vmlinuz', 'ramdisk': cache / 'initramfs.gz',
             'disk': cache / 'disk.raw'}
    stamp_file = cache / 'stamp'
    stamp = _stamp(version)
    fresh = (stamp_file.exists() and stamp_file.read_text() == stamp and
             paths['kernel'].exists() and paths['ramdisk'].exists())
    if not fresh:
        say('building the image for kernel %s in %s' % (version, cache))
        stamp_file.unlink(missing_ok=True)
        shutil.copy(tree / 'boot' / ('vmlinuz-%s' % version),
                    str(paths['kernel']) + '.tmp')
        os.replace(str(paths['kernel']) + '.tmp', paths['kernel'])
        count = _build_initramfs(tree, version, paths['ramdisk'])
        stamp_file.write_text(stamp)
        say('initramfs: %d KiB, %d modules; kernel: %d KiB' % (
            paths['ramdisk'].stat().st_size >> 10, count,
            paths['kernel'].stat().st_size >> 10))
    disk = paths['disk']
    if (not disk.exists() or disk.stat().st_size != DISK_BYTES or
            disk.read_bytes().strip(b'\0')):
        say('writing the root disk: %d KiB of zeros' % (DISK_BYTES >> 10))
        with open(str(disk) + '.tmp', 'wb') as f:
            f.write(b'\0' * DISK_BYTES)
        os.replace(str(disk) + '.tmp', disk)
    return {name: str(path) for name, path in paths.items()}


def parse_line(console_text):
    """The fields of the last VPMEM-GUEST line in a console log, or None."""
    if isinstance(console_text, bytes):
        console_text = console_text.decode('utf-8', 'replace')
    found = None
    for line in console_text.splitlines():
        at = line.find(LINE_PREFIX)
        if at < 0:
            continue
        fields = dict(word.split('=', 1)
                      for word in line[at + len(LINE_PREFIX):].split()
                      if '=' in word)
        if 'server' in fields:
            fields['raw'] = line[at:].strip()
            found = fields
    return found


def digest_bytes(fields):
    """How many bytes of the namespace a line's sha256 covers."""
    if 'sha256_mib' in fields:
        return int(fields['sha256_mib']) * MIB
    return int(fields.get('size', 0))


def pattern_sha256(server, size):
    """The digest of the pattern a first boot writes for this server."""
    rest = hashlib.sha256(server.encode()).hexdigest().encode() * (
        (MIB - 64) // 64)
    digest = hashlib.sha256()
    left = size
    i = 0
    while left > 0:
        chunk = ('%-63s\n' % ('VPMEM-PATTERN %s MiB %d' % (server, i))
                 ).encode() + rest
        digest.update(chunk[:left])
        left -= len(chunk)
        i += 1
    return digest.hexdigest()


def nvdimm_bytes(namespace_mib):
    """The backing file's size for a namespace of that many MiB."""
    return (namespace_mib + LABEL_MIB) * MIB


def boot(image, server, disk, nvdimm, console, timeout=300):
    """Boot the image with plain QEMU until it prints its line, then kill it.

    :param disk: the root disk (qcow2)
    :param nvdimm: the NVDIMM's backing file (label area in its last 2 MiB)
    :returns: (the line's fields or None, seconds to the line)
    """
    qemu = shutil.which('qemu-system-x86_64')
    if not qemu:
        msg = 'qemu-system-x86_64 is missing: run tools/setup-host'
        raise RuntimeError(msg)
    args = [qemu, '-accel', 'tcg', '-cpu', 'max', '-machine', 'pc,nvdimm=on',
            '-smp', '1', '-m', '512M,slots=2,maxmem=4G',
            '-smbios', 'type=1,uuid=%s' % server,
            '-kernel', image['kernel'], '-initrd', image['ramdisk'],
            '-append', CMDLINE,
            '-drive', 'file=%s,format=qcow2,if=virtio' % disk,
            '-object', 'memory-backend-file,id=mem1,share=on,pmem=on,'
            'mem-path=%s,size=%d' % (nvdimm, os.path.getsize(nvdimm)),
            '-device', 'nvdimm,id=nv1,memdev=mem1,label-size=%dM' % LABEL_MIB,
            '-serial', 'file:%s' % console, '-display', 'none',
            '-monitor', 'none', '-nic', 'none']
    if os.path.exists(console):
        os.unlink(console)
    start = time.monotonic()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    fields = None
    try:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                msg = 'QEMU ended early (%s): %s' % (
                    proc.returncode, proc.stdout.read().decode())
                raise RuntimeError(msg)
            if os.path.exists(console):
                with open(console, 'rb') as f:
                    text = f.read().decode('utf-8', 'replace')
                complete = text[:text.rfind('\n') + 1]
                fields = parse_line(complete)
                if fields:
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()     # a hard power-off, as Nova's
        proc.wait()
    return fields, time.monotonic() - start


def _copy_to_larger(src, dst, namespace_mib):
    """Copy an NVDIMM backing file onto a larger one, labels at its end."""
    label = LABEL_MIB * MIB
    src_size = os.path.getsize(src)
    dst_size = nvdimm_bytes(namespace_mib)
    with open(src, 'rb') as fin, open(dst, 'wb') as fout:
        fout.truncate(dst_size)
        for offset in range(0, src_size - label, MIB):
            chunk = fin.read(min(MIB, src_size - label - offset))
            if chunk.strip(b'\0'):
                fout.seek(offset)
                fout.write(chunk)
        fin.seek(src_size - label)
        fout.seek(dst_size - label)
        fout.write(fin.read(label))


def selftest():
    start = time.monotonic()
    image = build()
    # Stands for a server UUID (this runs on the system Python, without
    # oslo.utils).
    server = str(uuid.UUID(bytes=os.urandom(16), version=4))
    tmp = tempfile.mkdtemp(prefix='selftest-', dir=IMAGE)
    disk = os.path.join(tmp, 'disk.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', image['disk'], disk], check=True)
    small = os.path.join(tmp, 'nvdimm-256')
    large = os.path.join(tmp, 'nvdimm-512')
    zeroed = os.path.join(tmp, 'nvdimm-256-zeroed')
    for path, mib in ((small, 256), (zeroed, 256)):
        with open(path, 'wb') as f:
            f.truncate(nvdimm_bytes(mib))
    failures = []
    seen = []

    def check(what, ok):
        say('%s: %s' % ('ok' if ok else 'FAILED', what))
        if not ok:
            failures.append(what)

    def run_boot(number, what, nvdimm):
        say('boot %d (%s): server %s, NVDIMM %d MiB' % (
            number, what, server, os.path.getsize(nvdimm) >> 20))
        console = os.path.join(tmp, 'console-%d.log' % number)
        fields, seconds = boot(image, server, disk, nvdimm, console)
        with open(console, errors='replace') as f:
            text = f.read()
        for line in text.splitlines():
            if 'vpmem-guest:' in line:
                say('  %s' % line.strip())
        say('boot %d: line after %.1f s: %s' % (number, seconds, fields))
        if fields is None:
            print(text[-3000:])
        seen.append(fields or {})
        return fields or {}

    sample = ('VPMEM-GUEST uuid=- mode=none server=a\n'
              '[    9.1] VPMEM-GUEST uuid=u mode=devdax server=b\nidle\n')
    check('parse_line reads the last line',
          (parse_line(sample) or {}).get('server') == 'b' and
          parse_line('no line\n') is None)

    one = run_boot(1, 'first boot', small)
    check('boot 1 initialises (first_boot=yes, mode=devdax, pattern=ok)',
          (one.get('first_boot'), one.get('mode'), one.get('pattern')) ==
          ('yes', 'devdax', 'ok'))
    check('boot 1 digest is the pattern of the server over %s bytes' %
          one.get('size'),
          one.get('sha256') == pattern_sha256(server, digest_bytes(one)))
    check('boot 1 reports the server UUID', one.get('server') == server)
    check('boot 1 region is 256 MiB', one.get('region') == str(256 * MIB))

    two = run_boot(2, 'reboot', small)
    check('boot 2 is not a first boot and finds the same data',
          two.get('first_boot') == 'no' and two.get('pattern') == 'ok' and
          (two.get('uuid'), two.get('sha256')) ==
          (one.get('uuid'), one.get('sha256')))

    say('copying the NVDIMM onto a 512 MiB one, label area at its end')
    _copy_to_larger(small, large, 512)
    three = run_boot(3, 'larger NVDIMM', large)
    check('boot 3 finds the same namespace and data on a larger region',
          three.get('first_boot') == 'no' and
          three.get('pattern') == 'ok' and
          (three.get('uuid'), three.get('sha256'), three.get('size')) ==
          (one.get('uuid'), one.get('sha256'), one.get('size')) and
          three.get('region') == str(512 * MIB))

    four = run_boot(4, 'zeroed NVDIMM, same root disk', zeroed)
    check('boot 4 does not re-initialise and shows the data is gone',
          four.get('first_boot') == 'no' and
          four.get('mode') in ('raw', 'none') and
          four.get('pattern') == 'bad' and
          four.get('uuid') != one.get('uuid'))
    say('wall time %.0f s' % (time.monotonic() - start))
    if failures:
        say('%d checks failed; files kept in %s' % (len(failures), tmp))
        return 1
    shutil.rmtree(tmp)
    say('all checks passed')
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--selftest', action='store_true',
                        help='boot the image four times with plain QEMU')
    args = parser.parse_args(argv)
    if args.selftest:
        return selftest()
    for name, path in build().items():
        print('%s %s' % (name, path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
