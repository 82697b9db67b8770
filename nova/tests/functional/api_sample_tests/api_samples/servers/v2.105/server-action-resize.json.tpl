{
    "resize" : {
        "flavorRef" : "%(id)s",
        "OS-DCF:diskConfig": "AUTO",
        "copy_pmem_devices": true
    }
}
