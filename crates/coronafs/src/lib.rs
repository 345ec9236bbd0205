//! coronafs: mutable VM volumes (raw/qcow2) exported to workers over NBD.
