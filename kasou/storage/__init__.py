"""Storage: pools, volumes, templates and linked clones, snapshots, suspend to disk, disk
hot-plug and I/O limits (docs/storage.md).

    models.py     records (pools, volumes, attachments, snapshots, saved states), limits
    views.py      what the API answers
    qemu_img.py   qemu-img, reading its JSON output
    sniff.py      does a "raw" file look like a disk?
    argv.py       pure builders for volume disks (argv at launch, QMP dicts on hot-plug)
    core.py       what every operation shares: store, VM service, locks, paths
    pools.py      directories holding volumes
    volumes.py    create, resize, convert, template, delete
    fetch.py      download / hash with progress and sha256
    imports.py    import from a URL or a host file, probed before it is kept
    templates.py  a VM's own disk: linked clone, full copy or blank
    disks.py      attach/detach (hot-plug) and I/O limits
    snapshots.py  live (RAM + disks) and disk-only internal snapshots
    suspend.py    save RAM to disk, restore at the next start
    hook.py       storage's part of a VM's life (a VMHook)
    service.py    the command set the API calls
"""
