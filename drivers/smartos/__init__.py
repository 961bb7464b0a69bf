"""The SmartOS backend: zones and HVM guests through vmadm, imgadm and ZFS, run in the global
zone itself or over SSH to it."""
