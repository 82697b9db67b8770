{
    "migrate": {
        "copy_pmem_devices": true
    }
}
