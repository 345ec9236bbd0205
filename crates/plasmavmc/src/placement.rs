//! Placement: which worker gets a VM. Plain functions over a capacity snapshot; the store
//! re-checks the chosen worker's room atomically when it writes the VM.

/// One worker's capacity as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
    /// Heartbeating and not draining.
    pub schedulable: bool,
}

impl Candidate {
    pub fn free_memory_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.used_memory_mib)
    }

    pub fn free_vcpus(&self) -> u32 {
        self.vcpus.saturating_sub(self.used_vcpus)
    }

    fn fits(&self, vcpus: u32, memory_mib: u64) -> bool {
        self.free_vcpus() >= vcpus && self.free_memory_mib() >= memory_mib
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No worker is registered and up.
    #[error("no worker is available to run VMs")]
    NoWorkers,
    /// Larger than every worker's whole capacity: it can never be placed.
    #[error(
        "{vcpus} vCPUs / {memory_mib} MiB is larger than any worker (largest: {max_vcpus} vCPUs, {max_memory_mib} MiB)"
    )]
    TooLarge {
        vcpus: u32,
        memory_mib: u64,
        max_vcpus: u32,
        max_memory_mib: u64,
    },
    /// It would fit an empty worker, but every worker is too full now.
    #[error("no worker has {vcpus} vCPUs and {memory_mib} MiB free")]
    NoCapacity { vcpus: u32, memory_mib: u64 },
}

/// The schedulable worker with the most free memory after placing the VM (ties: most free
/// vCPUs, then name), spreading VMs across workers. `exclude` skips one worker (a migration's
/// source).
pub fn place<'a>(
    candidates: &'a [Candidate],
    vcpus: u32,
    memory_mib: u64,
    exclude: Option<&str>,
) -> Result<&'a Candidate, PlacementError> {
    let usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.schedulable && Some(c.name.as_str()) != exclude)
        .collect();
    if usable.is_empty() {
        return Err(PlacementError::NoWorkers);
    }
    // "Larger than any worker" is judged against every registered worker, up or not, so the
    // answer does not flip when a big worker misses a heartbeat.
    let max_memory_mib = candidates.iter().map(|c| c.memory_mib).max().unwrap_or(0);
    let max_vcpus = candidates.iter().map(|c| c.vcpus).max().unwrap_or(0);
    if !candidates
        .iter()
        .any(|c| c.vcpus >= vcpus && c.memory_mib >= memory_mib)
    {
        return Err(PlacementError::TooLarge {
            vcpus,
            memory_mib,
            max_vcpus,
            max_memory_mib,
        });
    }
    usable
        .into_iter()
        .filter(|c| c.fits(vcpus, memory_mib))
        .max_by(|a, b| {
            a.free_memory_mib()
                .cmp(&b.free_memory_mib())
                .then(a.free_vcpus().cmp(&b.free_vcpus()))
                .then(b.name.cmp(&a.name))
        })
        .ok_or(PlacementError::NoCapacity { vcpus, memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, vcpus: u32, mem: u64, used_v: u32, used_m: u64) -> Candidate {
        Candidate {
            name: name.into(),
            vcpus,
            memory_mib: mem,
            used_vcpus: used_v,
            used_memory_mib: used_m,
            schedulable: true,
        }
    }

    #[test]
    fn most_free_memory_wins() {
        let ws = [c("a", 8, 4096, 0, 3000), c("b", 8, 4096, 0, 1000)];
        assert_eq!(place(&ws, 1, 512, None).unwrap().name, "b");
        assert_eq!(place(&ws, 1, 512, Some("b")).unwrap().name, "a");
    }

    #[test]
    fn ties_break_by_name() {
        let ws = [c("b", 4, 1024, 0, 0), c("a", 4, 1024, 0, 0)];
        assert_eq!(place(&ws, 1, 128, None).unwrap().name, "a");
    }

    #[test]
    fn too_large_versus_full() {
        let ws = [c("a", 4, 1024, 0, 900), c("b", 2, 2048, 2, 0)];
        assert!(matches!(
            place(&ws, 1, 4096, None),
            Err(PlacementError::TooLarge {
                max_memory_mib: 2048,
                ..
            })
        ));
        assert!(matches!(
            place(&ws, 8, 128, None),
            Err(PlacementError::TooLarge { max_vcpus: 4, .. })
        ));
        // Fits an empty "a" or "b", but a lacks memory and b lacks vCPUs now.
        assert_eq!(
            place(&ws, 1, 1000, None),
            Err(PlacementError::NoCapacity {
                vcpus: 1,
                memory_mib: 1000
            })
        );
    }

    #[test]
    fn down_workers_are_skipped() {
        let mut down = c("a", 4, 4096, 0, 0);
        down.schedulable = false;
        let ws = [down.clone(), c("b", 4, 1024, 0, 0)];
        assert_eq!(place(&ws, 1, 512, None).unwrap().name, "b");
        assert_eq!(place(&[down], 1, 512, None), Err(PlacementError::NoWorkers));
        assert_eq!(place(&[], 1, 512, None), Err(PlacementError::NoWorkers));
    }
}
