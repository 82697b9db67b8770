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

"""A QEMU guest with emulated NVDIMMs that are real device-DAX namespaces.

There is no PMEM hardware on the machines that run the tests, and the KVM
there cannot run a stock kernel, so this boots a stock Debian kernel under
TCG with emulated NVDIMMs. The guest kernel turns them into real
``/dev/daxN.M`` character devices with ``ndctl``, and runs a command of the
host in a ``chroot`` of the host's root file system (shared read-only with
9p, with a tmpfs overlay on top), so the code under test is exactly the one
in the host's virtualenv.

The kernel comes from Debian's ``linux-image-amd64`` package (downloaded
with ``apt-get download`` and unpacked, never installed); the initramfs is
busybox-static, the kernel modules the NVDIMMs, 9p and the overlay need, and
an ``/init`` script. Both are cached under ``.workspace/dax-guest``.
"""

import gzip
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / '.workspace' / 'dax-guest'
MODULES = ('nfit', 'libnvdimm', 'nd_pmem', 'nd_btt', 'device_dax',
           'dax_pmem', 'virtio_pci', '9pnet_virtio', '9p', 'overlay')
LABEL_MIB = 2
EXIT_MARK = 'NOVA-DAX-GUEST-EXIT='

# Runs as PID 1 in the guest. Kernel command line: nova_dax_run=SCRIPT (a
# path on the host) and nova_dax_ns=NAME:SIZE_MIB,... (one per NVDIMM, in
# order, each of its own size; the names are what nova.conf lists as
# [libvirt] pmem_namespaces).
INIT = r'''#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
hostname dax-guest
say() { echo "dax-guest: $*"; }
for m in $(cat /modules.order); do insmod "$m" || say "insmod $m failed"; done
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        nova_dax_run=*) run=${arg#nova_dax_run=} ;;
        nova_dax_ns=*) namespaces=${arg#nova_dax_ns=} ;;
    esac
done
mkdir -p /host /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host
mount -t tmpfs tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay \
    -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot
for fs in proc sys dev; do mount --bind /$fs /newroot/$fs; done

in_root() { chroot /newroot env PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
say "making the NVDIMMs device-DAX namespaces"
in_root ndctl disable-region all
in_root ndctl init-labels -f all
in_root ndctl enable-region all
conf=""
region=0
# Regions are not numbered in NVDIMM order: match each one by its size.
while [ -e /sys/bus/nd/devices/region$region ]; do
    size=$(cat /sys/bus/nd/devices/region$region/size)
    name=""
    for ns in $(echo "$namespaces" | tr ',' ' '); do
        [ $(( ${ns#*:} * 1048576 )) -eq "$size" ] && name=${ns%%:*}
    done
    in_root ndctl create-namespace -m devdax -r region$region \
        -n "$name" >/dev/null || say "create-namespace $name failed"
    # Namespaces named unlisted* are not ones nova may give to guests.
    case "$name" in
        unlisted*) ;;
        *) conf="$conf${conf:+,}$(echo "$name" | tr a-z A-Z):$name" ;;
    esac
    region=$((region + 1))
done
# state_path and host: where nova-compute keeps this host's owners file of
# the namespaces (the tests write it), which the helper reads.
mkdir -p /newroot/etc/nova /newroot/var/lib/nova
printf '[DEFAULT]\nstate_path = /var/lib/nova\nhost = dax-guest\n\n' \
    > /newroot/etc/nova/nova.conf
printf '[libvirt]\npmem_namespaces = %s\n' "$conf" \
    >> /newroot/etc/nova/nova.conf
ls /newroot/dev | grep '^dax' | sed 's/^/dax-guest: device /'
say "running $run"
in_root sh "$run"
echo "NOVA-DAX-GUEST-EXIT=$?"
sync
poweroff -f
'''


def say(text):
    print('dax-guest: %s' % text, flush=True)


def _run(*cmd, **kwargs):
    return subprocess.run(cmd, check=True, **kwargs)


def _kernel_package():
    for attempt in range(2):
        out = subprocess.run(['apt-cache', 'depends', 'linux-image-amd64'],
                             capture_output=True, text=True).stdout
        match = re.search(r'Depends: (linux-image-\S+)', out)
        if match:
            return match.group(1)
        if not attempt:
            say('apt has no package lists yet: apt-get update')
            _run('apt-get', 'update', '-qq')
    raise RuntimeError('apt knows no linux-image-amd64 package')


def _fetch_kernel(cache):
    """Download and unpack the kernel package; return (tree, version)."""
    tree = cache / 'kernel'
    if not tree.exists():
        package = _kernel_package()
        say('downloading %s' % package)
        work = pathlib.Path(tempfile.mkdtemp(dir=cache))
        _run('apt-get', 'download', '-q', package, cwd=work,
             stdout=subprocess.DEVNULL)
        deb = next(work.glob('*.deb'))
        say('unpacking %s' % deb.name)
        _run('dpkg-deb', '-x', str(deb), str(work / 'tree'))
        (work / 'tree').rename(tree)
        shutil.rmtree(work)
    version = next((tree / 'lib' / 'modules').iterdir()).name
    return tree, version


def _module_files(tree, version, modules=MODULES):
    """The modules' files in load order, dependencies first."""
    _run('depmod', '-b', str(tree), version)
    # The host's modprobe.d (ndctl's "install libnvdimm" rule) must not
    # change what the guest loads.
    no_config = tree / 'no-modprobe.d'
    no_config.mkdir(exist_ok=True)
    files = []
    for module in modules:
        out = _run('modprobe', '-C', str(no_config), '-d', str(tree), '-S',
                   version, '--show-depends', module, capture_output=True,
                   text=True).stdout
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ['insmod'] and words[1] not in files:
                files.append(words[1])
    return files


def build(cache=CACHE):
    """Build (or reuse) the kernel and initramfs; return their paths."""
    cache.mkdir(parents=True, exist_ok=True)
    tree, version = _fetch_kernel(cache)
    kernel = tree / 'boot' / ('vmlinuz-%s' % version)
    initrd = cache / ('initrd-%s.gz' % version)
    if initrd.exists() and initrd.stat().st_mtime >= pathlib.Path(
            __file__).stat().st_mtime:
        return kernel, initrd
    say('building the initramfs for kernel %s' % version)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        top = pathlib.Path(tmp) / 'initramfs'
        for sub in ('bin', 'proc', 'sys', 'dev', 'lib/modules'):
            (top / sub).mkdir(parents=True)
        shutil.copy('/bin/busybox', top / 'bin' / 'busybox')
        order = []
        for path in _module_files(tree, version):
            target = top / 'lib' / 'modules' / os.path.basename(path)
            shutil.copy(path, target)
            order.append('/lib/modules/%s' % target.name)
        (top / 'modules.order').write_text('\n'.join(order) + '\n')
        (top / 'init').write_text(INIT)
        (top / 'init').chmod(0o755)
        names = subprocess.run(['find', '.'], cwd=top, check=True,
                               capture_output=True).stdout
        archive = subprocess.run(['cpio', '-o', '-H', 'newc', '--quiet'],
                                 cwd=top, input=names, check=True,
                                 capture_output=True).stdout
        with gzip.open(str(initrd) + '.tmp', 'wb', compresslevel=1) as f:
            f.write(archive)
        os.replace(str(initrd) + '.tmp', initrd)
    say('initramfs %s: %d KiB, %d modules' % (
        initrd.name, initrd.stat().st_size >> 10, len(order)))
    return kernel, initrd


def run(script, namespaces, timeout=1500, memory_mib=1024):
    """Boot the guest, run ``script`` (a host path) as root in it.

    :param namespaces: [(name, size in MiB)], one emulated NVDIMM each; the
        size must be a multiple of 16 MiB (the label area comes on top).
    :returns: (the script's exit code, the lines the guest printed)
    """
    qemu = shutil.which('qemu-system-x86_64')
    if not qemu:
        raise RuntimeError('qemu-system-x86_64 is missing: run '
                           'tools/setup-host')
    kernel, initrd = build()
    # Multi-threaded TCG: the helper's pipelines and sudo run side by side.
    cpus = min(2, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix='dax-guest-') as tmp:
        args = [qemu, '-accel', 'tcg', '-cpu', 'max', '-machine',
                'pc,nvdimm=on', '-smp', str(cpus), '-m',
                '%dM,slots=%d,maxmem=8G' % (memory_mib, len(namespaces)),
                '-nographic', '-no-reboot', '-kernel', str(kernel),
                '-initrd', str(initrd),
                '-virtfs', 'local,path=/,mount_tag=host,'
                'security_model=none,readonly=on,multidevs=remap']
        for i, (name, mib) in enumerate(namespaces):
            backing = os.path.join(tmp, name)
            with open(backing, 'wb') as f:
                f.truncate((mib + LABEL_MIB) << 20)
            args += ['-object', 'memory-backend-file,id=mem%d,share=on,'
                     'mem-path=%s,size=%dM' % (i, backing, mib + LABEL_MIB),
                     '-device', 'nvdimm,id=nv%d,memdev=mem%d,label-size=%dM'
                     % (i, i, LABEL_MIB)]
        args += ['-append', 'console=ttyS0 quiet panic=-1 nova_dax_run=%s '
                 'nova_dax_ns=%s' % (script, ','.join(
                     '%s:%d' % ns for ns in namespaces))]
        say('booting %s with %d NVDIMMs (TCG, %d vCPUs)' % (
            kernel.name, len(namespaces), cpus))
        start = time.monotonic()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        code = None
        lines = []
        # A timer, not a check between lines: a guest that hangs silently
        # is stopped too.
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            for raw in proc.stdout:
                line = raw.decode('utf-8', 'replace').rstrip('\r\n')
                if line.startswith(EXIT_MARK):
                    code = int(line[len(EXIT_MARK):] or 1)
                else:
                    print(line, flush=True)
                    lines.append(line)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if code is None and time.monotonic() - start >= timeout:
            say('timed out after %d s' % timeout)
        say('guest ended after %.0f s, exit code %s' % (
            time.monotonic() - start, code))
        return (1 if code is None else code), lines


def compile_nova():
    """Compile nova's modules here, before the guest reads them.

    The guest sees the tree read-only, so its processes that do not run as
    root (nova's, behind sudo) would compile what they import under TCG
    every time. The guest runs this machine's Python: the bytecode fits.
    """
    start = time.monotonic()
    _run(str(ROOT / '.venv' / 'bin' / 'python'), '-m', 'compileall', '-q',
         '-j', '0', '-x', '/tests/', str(ROOT / '.workspace' / 'nova' /
                                         'nova'), stdout=subprocess.DEVNULL)
    say('compiled nova in %.0f s' % (time.monotonic() - start))


def run_unittest(module, namespaces):
    """Run a unittest module in the guest.

    :returns: (passed, failed, skipped)
    """
    compile_nova()
    script = CACHE / 'run-tests.sh'
    CACHE.mkdir(parents=True, exist_ok=True)
    script.write_text(
        'cd %(root)s\n'
        'PYTHONPATH=%(nova)s:%(root)s PYTHONWARNINGS=ignore '
        '%(python)s -m unittest -v %(module)s 2>&1\n' % {
            'root': shlex.quote(str(ROOT)),
            'nova': shlex.quote(str(ROOT / '.workspace' / 'nova')),
            'python': shlex.quote(str(ROOT / '.venv' / 'bin' / 'python')),
            'module': shlex.quote(module)})
    code, lines = run(str(script), namespaces)
    text = '\n'.join(lines)
    ran = re.search(r'^Ran (\d+) tests? in', text, re.M)
    if not ran:
        return 0, 1, 0
    total = int(ran.group(1))
    counts = {k: int(v) for k, v in re.findall(
        r'(failures|errors|skipped|expected failures)=(\d+)', text)}
    failed = counts.get('failures', 0) + counts.get('errors', 0)
    skipped = counts.get('skipped', 0) + counts.get('expected failures', 0)
    if code and not failed:
        failed = 1
    return total - failed - skipped, failed, skipped


# The NVDIMMs of the device-DAX tests: each of its own size, so that the
# guest can tell them apart.
TEST_NAMESPACES = [('ns_small', 32), ('ns_large', 64), ('unlisted', 16)]


def main():
    start = time.monotonic()
    passed, failed, skipped = run_unittest('e2e.dax.test_device_dax',
                                           TEST_NAMESPACES)
    say('wall time %.0f s' % (time.monotonic() - start))
    print('%d passed, %d failed, %d skipped' % (passed, failed, skipped))
    return 1 if failed or not passed else 0


if __name__ == '__main__':
    sys.exit(main())
