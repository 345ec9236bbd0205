//! plasmavmc: the VM control plane and the QEMU/KVM worker agent.

pub mod hypervisor;
