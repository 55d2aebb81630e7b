"""The kernel-initiator guests' boot image: Debian's own kernel and an initramfs
built from installed Debian packages (busybox-static, open-iscsi, e2fsprogs,
xfsprogs, kmod, udev, dmsetup) plus the lab's init (guest/init.sh) and writer
(guest/writer.c), and dm-multipath (multipath-tools, for LAB_MULTIPATH).

multipath-tools is taken from its .deb (``apt-get download``, cached under
``DEBS``), not installed on the host: its package starts multipathd there.
dm-multipath counts only udev-initialised devices, hence udevd in the guest.

Built once and cached under ``CACHE``: the key covers the kernel, the versions
of the packages it is built from and the lab's own guest sources, so a kernel
or package upgrade (or an edit here) builds a new one.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path("/var/cache/tgtha-lab/guest")
DEBS = Path("/var/cache/tgtha-lab/debs")
GUEST_ONLY_PACKAGES = ["multipath-tools"]
HERE = Path(__file__).parent
SOURCES = [HERE / "guest" / "init.sh", HERE / "guest" / "writer.c", Path(__file__)]
PACKAGES = ["linux-image-amd64", "busybox-static", "open-iscsi", "e2fsprogs", "xfsprogs", "kmod", "libc6",
            "udev", "dmsetup"]
BINARIES = ["iscsid", "iscsiadm", "mke2fs", "mkfs.xfs", "kmod", "dmsetup", "udevadm"]
MODULES = ["virtio_pci", "virtio_net", "iscsi_tcp", "sd_mod", "ext4", "xfs", "crc32c_generic",
           "crc32c_intel", "libcrc32c", "dm_multipath", "dm_service_time", "dm_round_robin"]
# What dm-multipath needs of udev: the devices' ID_SERIAL (scsi_id) and dm's own rules.
UDEV_RULES = ["50-udev-default", "55-dm", "60-block", "60-persistent-storage", "60-persistent-storage-dm",
              "95-dm-notify"]
MULTIPATH_CONF = """\
# The lab's guests: every LUN's two paths (one per network) make one map.
defaults {
    find_multipaths no
    no_path_retry queue
}
"""


class ImageError(RuntimeError):
    pass


def kernel_version() -> str:
    versions = sorted((p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*")),
                      key=_version_key)
    usable = [v for v in versions if Path(f"/lib/modules/{v}").is_dir()]
    if not usable:
        raise ImageError("no kernel with modules in /boot and /lib/modules (Debian package linux-image-amd64)")
    return usable[-1]


def _version_key(version: str) -> list:
    return [int(part) if part.isdigit() else part for part in version.replace("-", ".").split(".")]


def cache_key(kernel: str) -> str:
    digest = hashlib.sha256(kernel.encode())
    listing = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *PACKAGES],
                             capture_output=True, text=True).stdout
    digest.update(listing.encode())
    for deb in guest_debs():
        digest.update(deb.name.encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def guest_debs() -> list[Path]:
    """The guest-only packages' .debs, downloaded once (the candidate version of this
    machine's apt sources: a newer one downloads and builds a new image)."""
    DEBS.mkdir(parents=True, exist_ok=True)
    found = []
    for package in GUEST_ONLY_PACKAGES:
        version = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
        candidate = next((line.split()[1] for line in version.splitlines() if "Candidate:" in line), "")
        name = f"{package}_{candidate.replace(':', '%3a')}_amd64.deb"
        if not candidate or candidate == "(none)":
            raise ImageError(f"apt knows no {package} (apt-get update?)")
        if not (DEBS / name).exists():
            fetched = subprocess.run(["apt-get", "download", f"{package}={candidate}"], cwd=DEBS,
                                     capture_output=True, text=True)
            if fetched.returncode != 0 or not (DEBS / name).exists():
                raise ImageError(f"apt-get download {package} failed: {fetched.stderr.strip()[-300:]}")
        found.append(DEBS / name)
    return found


def ensure_image(progress=print) -> tuple[Path, Path]:
    """(kernel, initramfs) for the guests, built if the cache has none for this key."""
    kernel = kernel_version()
    directory = CACHE / cache_key(kernel)
    initramfs = directory / "initramfs.cpio.gz"
    if not initramfs.exists():
        progress(f"building the guest image for kernel {kernel} (cached in {directory})")
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tgtha-guest-") as work:
            _build(Path(work), kernel, initramfs)
    return Path(f"/boot/vmlinuz-{kernel}"), initramfs


def _build(work: Path, kernel: str, initramfs: Path) -> None:
    root = work / "root"
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc/iscsi", "proc", "sys", "dev",
                "run", "tmp", "mnt", "var/lib", "root"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("../run")
    _install_busybox(root)
    binaries = []
    for name in BINARIES:
        found = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if found is None:
            raise ImageError(f"{name} is not installed (see PACKAGES in {__file__})")
        binaries.append(Path(found).resolve())
        shutil.copy2(found, root / "sbin" / name, follow_symlinks=True)
    (root / "sbin/mkfs.ext4").symlink_to("mke2fs")
    for tool in ("modprobe", "insmod", "depmod"):
        (root / "sbin" / tool).symlink_to("kmod")
    binaries += _install_multipath(root, work)
    # glibc loads libgcc_s itself, for pthread_cancel (multipathd aborts without it): ldd cannot see that.
    for library in _libraries(binaries, work / "debs/lib") | {Path("/lib/x86_64-linux-gnu/libgcc_s.so.1")}:
        target = root / library.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, target, follow_symlinks=True)
    _install_modules(root, kernel)
    _configure(root)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(root / "sbin/writer"), str(HERE / "guest/writer.c")],
                   check=True, capture_output=True)
    shutil.copy2(HERE / "guest/init.sh", root / "init")
    (root / "init").chmod(0o755)
    partial = initramfs.with_suffix(".partial")
    with open(partial, "wb") as out:
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        gzip = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=out)
        cpio.stdout.close()
        cpio.stdin.write(files)
        cpio.stdin.close()
        if cpio.wait() or gzip.wait():
            raise ImageError("cpio | gzip failed")
    partial.rename(initramfs)


def _install_busybox(root: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise ImageError("busybox is not installed (Debian package busybox-static)")
    shutil.copy2(busybox, root / "bin/busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")


def _install_multipath(root: Path, work: Path) -> list[Path]:
    """multipath-tools from its .deb, udevd and the rules multipath needs; the
    files whose libraries must come along."""
    unpacked = work / "debs"
    for deb in guest_debs():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    needing_libraries = []
    for name in ("multipath", "multipathd"):
        shutil.copy2(unpacked / "sbin" / name, root / "sbin" / name)
        needing_libraries.append(unpacked / "sbin" / name)
    for library in (unpacked / "lib").glob("lib*.so.*"):
        shutil.copy2(library, root / "lib" / library.name)
    (root / "lib/multipath").mkdir()
    for plugin in (unpacked / "lib/multipath").glob("*.so"):
        shutil.copy2(plugin, root / "lib/multipath" / plugin.name)
        needing_libraries.append(plugin)
    rules = root / "lib/udev/rules.d"
    rules.mkdir(parents=True)
    for rule in UDEV_RULES:
        shutil.copy2(f"/lib/udev/rules.d/{rule}.rules", rules)
    for rule in (unpacked / "lib/udev/rules.d").glob("*.rules"):
        shutil.copy2(rule, rules)
    shutil.copy2("/lib/udev/scsi_id", root / "lib/udev/scsi_id")
    (root / "lib/systemd").mkdir(parents=True)
    (root / "lib/systemd/systemd-udevd").symlink_to("/sbin/udevadm")   # udevadm is udevd by that name
    (root / "etc/multipath.conf").write_text(MULTIPATH_CONF)
    return needing_libraries + [Path("/lib/udev/scsi_id")]


def _libraries(binaries: list[Path], also: Path) -> set[Path]:
    """Every shared library the binaries load (``also``: where the unpacked packages' are)."""
    libraries = set()
    for binary in binaries:
        listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                                 env={"LD_LIBRARY_PATH": str(also)}).stdout
        for line in listing.splitlines():
            for word in line.split():
                if word.startswith("/") and not word.startswith(str(also)):
                    libraries.add(Path(word))
    return libraries


def _install_modules(root: Path, kernel: str) -> None:
    modules = root / "lib/modules" / kernel
    modules.mkdir(parents=True)
    for listing in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        source = Path("/lib/modules") / kernel / listing
        if source.exists():
            shutil.copy2(source, modules / listing)
    for module in MODULES:
        shown = subprocess.run(["modprobe", "-S", kernel, "--show-depends", module],
                               capture_output=True, text=True)
        for line in shown.stdout.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                target = root / words[1].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(words[1], target)
    subprocess.run(["depmod", "-b", str(root), kernel], check=True)


def _configure(root: Path) -> None:
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    if Path("/etc/mke2fs.conf").exists():
        shutil.copy2("/etc/mke2fs.conf", root / "etc/mke2fs.conf")
    # iscsid is started by the guest's setup script, not through systemctl.
    conf = Path("/etc/iscsi/iscsid.conf").read_text().splitlines()
    conf = ["iscsid.startup = /bin/true" if line.startswith("iscsid.startup") else line for line in conf]
    (root / "etc/iscsi/iscsid.conf").write_text("\n".join(conf) + "\n")
    for sub in ("nodes", "send_targets", "ifaces", "isns", "static"):
        (root / "etc/iscsi" / sub).mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    print(*ensure_image())
