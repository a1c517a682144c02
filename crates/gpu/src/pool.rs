//! Whole cards leased to containers: never two holders of one card, freed on drop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{GpuCard, GpuChoices, GpuError, GpuRequest, Inventory};

/// The host's cards and who holds each. Cheap to clone; clones share the leases.
#[derive(Debug, Clone)]
pub struct GpuPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    inventory: Inventory,
    /// Per card (same order as the inventory): the holder's name, if leased.
    holders: Mutex<Vec<Option<String>>>,
    released: tokio::sync::Notify,
}

/// One current lease, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub holder: String,
    pub cards: Vec<GpuCard>,
}

impl GpuPool {
    pub fn new(inventory: Inventory) -> Self {
        let holders = Mutex::new(vec![None; inventory.cards.len()]);
        GpuPool { inner: Arc::new(Inner { inventory, holders, released: tokio::sync::Notify::new() }) }
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inner.inventory
    }

    /// The one check every path makes before accepting a GPU request: `Ok` when at least one
    /// of the choices could be met once the host's cards are free, else an error naming what
    /// the host has. Busy cards do not matter here (those requests wait).
    pub fn check(&self, choices: &GpuChoices) -> Result<(), GpuError> {
        if choices.requests().iter().any(|r| self.candidates(r).len() >= r.count as usize) {
            return Ok(());
        }
        let labels: Vec<&str> = self.inner.inventory.cards.iter().filter_map(|c| c.label.as_deref()).collect();
        let hint = if self.inner.inventory.cards.is_empty() {
            String::new()
        } else if labels.is_empty() {
            " (gpu=\"any\" can use them)".to_string()
        } else {
            let mut l = labels.clone();
            l.sort_unstable();
            l.dedup();
            format!(", e.g. gpu=\"{}\" or gpu=\"any\"", l[0])
        };
        Err(GpuError::Unsatisfiable { request: choices.to_string(), host: self.inner.inventory.describe(), hint })
    }

    /// Cards that serve `request`, best first: exact matches, then upgrades, each by index.
    fn candidates(&self, request: &GpuRequest) -> Vec<usize> {
        let mut found: Vec<(u8, u32, usize)> = self
            .inner
            .inventory
            .cards
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| request.accepts(c.label.as_deref()).map(|rank| (rank, c.index, slot)))
            .collect();
        found.sort_unstable();
        found.into_iter().map(|(_, _, slot)| slot).collect()
    }

    /// Leases cards for the first choice that free cards can meet now. `Ok(None)`: every
    /// choice that fits the host is busy, try again after a release ([`GpuPool::released`]).
    /// `Err`: the host can never meet any choice.
    pub fn try_lease(&self, choices: &GpuChoices, holder: &str) -> Result<Option<GpuLease>, GpuError> {
        self.check(choices)?;
        let mut holders = self.inner.holders.lock().unwrap();
        for request in choices.requests() {
            let free: Vec<usize> = self.candidates(request).into_iter().filter(|&s| holders[s].is_none()).take(request.count as usize).collect();
            if free.len() == request.count as usize {
                for &s in &free {
                    holders[s] = Some(holder.to_string());
                }
                let cards = free.iter().map(|&s| self.inner.inventory.cards[s].clone()).collect();
                return Ok(Some(GpuLease { inner: self.inner.clone(), slots: free, cards, request: request.clone() }));
            }
        }
        Ok(None)
    }

    /// Waits for a lease: tries now, then after each release (and once a second, so `give_up`
    /// is looked at). `Ok(None)` once `give_up` says so.
    pub async fn lease(&self, choices: &GpuChoices, holder: &str, give_up: impl Fn() -> bool) -> Result<Option<GpuLease>, GpuError> {
        loop {
            let released = self.inner.released.notified();
            if let Some(lease) = self.try_lease(choices, holder)? {
                return Ok(Some(lease));
            }
            if give_up() {
                return Ok(None);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), released).await;
        }
    }

    /// Who holds which cards now.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        let holders = self.inner.holders.lock().unwrap();
        let mut out: Vec<LeaseInfo> = Vec::new();
        for (slot, h) in holders.iter().enumerate() {
            let Some(h) = h else { continue };
            let card = self.inner.inventory.cards[slot].clone();
            match out.iter_mut().find(|l| &l.holder == h) {
                Some(l) => l.cards.push(card),
                None => out.push(LeaseInfo { holder: h.clone(), cards: vec![card] }),
            }
        }
        out
    }

    /// How many cards are free now.
    pub fn free(&self) -> usize {
        self.inner.holders.lock().unwrap().iter().filter(|h| h.is_none()).count()
    }
}

/// Cards held by one container; dropping the lease frees them and wakes waiters.
#[derive(Debug)]
pub struct GpuLease {
    inner: Arc<Inner>,
    slots: Vec<usize>,
    cards: Vec<GpuCard>,
    request: GpuRequest,
}

impl GpuLease {
    pub fn cards(&self) -> &[GpuCard] {
        &self.cards
    }

    /// The request of the list that was met.
    pub fn request(&self) -> &GpuRequest {
        &self.request
    }

    /// The GPU type of the leased cards (`H100`), as Modal reports it; `GPU` when unknown.
    pub fn model(&self) -> &str {
        self.cards.first().and_then(|c| c.label.as_deref()).unwrap_or("GPU")
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        let mut holders = self.inner.holders.lock().unwrap();
        for &s in &self.slots {
            holders[s] = None;
        }
        drop(holders);
        self.inner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FakeInventory, GpuAliases};

    fn choices(items: &[&str]) -> GpuChoices {
        GpuChoices::parse_list(items).unwrap()
    }

    fn fake_pool() -> GpuPool {
        GpuPool::new(
            FakeInventory::new()
                .card("NVIDIA H100 80GB HBM3", 80)
                .card("NVIDIA H100 80GB HBM3", 80)
                .card("NVIDIA A100-SXM4-40GB", 40)
                .card("NVIDIA A100-SXM4-80GB", 80)
                .card("Tesla T4", 16)
                .build(),
        )
    }

    fn indices(lease: &GpuLease) -> Vec<u32> {
        lease.cards().iter().map(|c| c.index).collect()
    }

    #[test]
    fn a_cpu_only_host_refuses_every_request_naming_what_it_has() {
        let pool = GpuPool::new(Inventory::none());
        for g in [&["T4"][..], &["any"], &["A10G:2"], &["H100", "A100"]] {
            let err = pool.check(&choices(g)).unwrap_err();
            assert!(err.to_string().contains("it has no GPUs"), "{err}");
            assert!(pool.try_lease(&choices(g), "ta-1").is_err());
        }
        assert_eq!(
            pool.check(&choices(&["H100", "A100"])).unwrap_err().to_string(),
            "this Ferry host cannot provide gpu=[\"H100\", \"A100\"]: it has no GPUs. Drop gpu= or ask for a GPU the host has"
        );
    }

    #[test]
    fn names_select_matching_fake_cards() {
        let pool = fake_pool();
        let t4 = pool.try_lease(&choices(&["T4"]), "a").unwrap().unwrap();
        assert_eq!((indices(&t4), t4.model()), (vec![4], "T4"));
        // "A100" prefers the 40 GB card, then takes the 80 GB one.
        let a1 = pool.try_lease(&choices(&["A100"]), "b").unwrap().unwrap();
        let a2 = pool.try_lease(&choices(&["A100"]), "c").unwrap().unwrap();
        assert_eq!((indices(&a1), indices(&a2)), (vec![2], vec![3]));
        assert!(pool.try_lease(&choices(&["A100"]), "d").unwrap().is_none(), "both A100s are busy");
        let err = pool.check(&choices(&["L4"])).unwrap_err().to_string();
        assert!(err.contains("it has 5 GPUs: NVIDIA H100 80GB HBM3 (H100, 80 GiB)"), "{err}");
        assert!(err.contains("Tesla T4 (T4, 16 GiB)"), "{err}");
        assert!(pool.check(&choices(&["A100-80GB"])).is_ok());
        assert!(pool.check(&choices(&["H200"])).is_err());
    }

    #[test]
    fn counts_take_several_whole_cards_or_none() {
        let pool = fake_pool();
        let two = pool.try_lease(&choices(&["H100:2"]), "a").unwrap().unwrap();
        assert_eq!(indices(&two), vec![0, 1]);
        assert!(pool.try_lease(&choices(&["H100"]), "b").unwrap().is_none());
        drop(two);
        let one = pool.try_lease(&choices(&["H100"]), "b").unwrap().unwrap();
        // Only one H100 is free now: a request for two waits, it does not take one.
        assert!(pool.try_lease(&choices(&["H100:2"]), "c").unwrap().is_none());
        assert_eq!(pool.free(), 4);
        drop(one);
        assert!(pool.check(&choices(&["H100:3"])).is_err(), "the host has two H100s");
        assert!(pool.check(&choices(&["any:5"])).is_ok());
        assert!(pool.check(&choices(&["any:6"])).is_err());
    }

    #[test]
    fn fallbacks_are_taken_in_order() {
        let pool = fake_pool();
        let list = choices(&["H100", "A100-80GB", "T4"]);
        let leases: Vec<GpuLease> = (0..4).map(|i| pool.try_lease(&list, &format!("t{i}")).unwrap().unwrap()).collect();
        let got: Vec<&str> = leases.iter().map(|l| l.model()).collect();
        assert_eq!(got, ["H100", "H100", "A100-80GB", "T4"]);
        assert!(pool.try_lease(&list, "t4").unwrap().is_none(), "all fallbacks busy: wait");
        // A list whose first entry the host never has falls through to one it has.
        assert!(pool.check(&choices(&["B200", "T4"])).is_ok());
    }

    #[test]
    fn h100_may_run_on_h200_but_not_with_the_bang() {
        let pool = GpuPool::new(FakeInventory::new().card("NVIDIA H200", 141).build());
        assert!(pool.check(&choices(&["H100"])).is_ok());
        let err = pool.check(&choices(&["H100!"])).unwrap_err().to_string();
        assert!(err.contains("NVIDIA H200 (H200, 141 GiB)") && err.contains("gpu=\"H200\""), "{err}");
    }

    #[test]
    fn aliases_let_requests_reach_cards_modal_does_not_name() {
        let mut aliases = GpuAliases::default();
        aliases.add("NVIDIA RTX 6000 Ada Generation=L40S").unwrap();
        let card = "NVIDIA RTX 6000 Ada Generation";
        let without = GpuPool::new(FakeInventory::new().card(card, 48).build());
        assert!(without.check(&choices(&["L40S"])).is_err());
        assert!(without.check(&choices(&["any"])).is_ok());
        let with = GpuPool::new(FakeInventory::new().card(card, 48).aliases(aliases).build());
        assert_eq!(with.try_lease(&choices(&["L40S"]), "a").unwrap().unwrap().model(), "L40S");
    }

    #[test]
    fn concurrent_leases_never_share_a_card() {
        let pool = fake_pool();
        let list = choices(&["any"]);
        let held = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for t in 0..16 {
                let (pool, list, held) = (pool.clone(), list.clone(), held.clone());
                s.spawn(move || {
                    for i in 0..200 {
                        if let Some(lease) = pool.try_lease(&list, &format!("t{t}-{i}")).unwrap() {
                            let idx = lease.cards()[0].index;
                            {
                                let mut h = held.lock().unwrap();
                                assert!(!h.contains(&idx), "card {idx} leased twice");
                                h.push(idx);
                            }
                            std::thread::yield_now();
                            held.lock().unwrap().retain(|&x| x != idx);
                            drop(lease);
                        }
                    }
                });
            }
        });
        assert_eq!(pool.free(), 5, "every lease was freed");
        assert!(pool.leases().is_empty());
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_card_when_it_is_freed() {
        let pool = GpuPool::new(FakeInventory::new().card("Tesla T4", 16).build());
        let first = pool.try_lease(&choices(&["T4"]), "first").unwrap().unwrap();
        assert_eq!(pool.leases(), vec![LeaseInfo { holder: "first".into(), cards: first.cards().to_vec() }]);
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.lease(&choices(&["T4"]), "second", || false).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the card is busy: the request waits");
        let started = std::time::Instant::now();
        drop(first);
        let second = waiter.await.unwrap().unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_millis(500), "woken by the release, not the poll");
        assert_eq!(pool.leases()[0].holder, "second");
        drop(second);
        // Giving up ends the wait without a lease.
        let _busy = pool.try_lease(&choices(&["T4"]), "third").unwrap().unwrap();
        assert!(pool.lease(&choices(&["T4"]), "fourth", || true).await.unwrap().is_none());
        // A request the host can never meet fails at once instead of waiting.
        assert!(pool.lease(&choices(&["H100"]), "fifth", || false).await.is_err());
    }
}
