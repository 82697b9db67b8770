{
    "migrate": {
        "host": %(hostname)s,
        "copy_pmem_devices": true
    }
}
