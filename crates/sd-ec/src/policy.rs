//! The d:p policy as stored in an inode's `copy_policy` (PROTOCOL.md §5.5)
//! and the stripe arithmetic of §8.

use crate::EcError;

/// Bytes of object data per stripe (`SD_EC_DATA_STRIPE_SIZE`).
pub const STRIPE_SIZE: usize = 512;

/// Data strip counts the format allows.
const VALID_D: [u8; 4] = [2, 4, 8, 16];

/// An erasure-code policy: `d` data strips and `p` parity strips per
/// stripe, stored on `d + p` targets.
///
/// Plain public fields because it is a value copied around with inodes
/// and requests; anything that depends on it being valid
/// ([`Codec::new`](crate::Codec::new)) calls [`EcPolicy::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EcPolicy {
    /// Data strips per stripe: 2, 4, 8 or 16.
    pub d: u8,
    /// Parity strips per stripe: 1..=15.
    pub p: u8,
}

impl EcPolicy {
    /// A validated policy.
    pub fn new(d: u8, p: u8) -> Result<EcPolicy, EcError> {
        let policy = EcPolicy { d, p };
        policy.validate()?;
        Ok(policy)
    }

    /// Decodes an inode's `copy_policy` byte. `None` for 0 (plain
    /// replication) and for values that do not describe a valid policy.
    pub fn from_copy_policy(copy_policy: u8) -> Option<EcPolicy> {
        EcPolicy::new((copy_policy >> 4) * 2, copy_policy & 0x0f).ok()
    }

    /// The `copy_policy` byte, `((d / 2) << 4) | p`.
    pub fn copy_policy(&self) -> u8 {
        ((self.d / 2) << 4) | (self.p & 0x0f)
    }

    /// Checks d ∈ {2, 4, 8, 16} and 1 ≤ p ≤ 15 (so d + p ≤ 31).
    pub fn validate(&self) -> Result<(), EcError> {
        if VALID_D.contains(&self.d) && (1..=15).contains(&self.p) {
            Ok(())
        } else {
            Err(EcError::InvalidPolicy {
                d: self.d,
                p: self.p,
            })
        }
    }

    /// Data strips per stripe, as a count.
    pub fn data_strips(&self) -> usize {
        self.d as usize
    }

    /// Parity strips per stripe, as a count.
    pub fn parity_strips(&self) -> usize {
        self.p as usize
    }

    /// Targets an object is spread over: d + p (`nr_copies`).
    pub fn nr_copies(&self) -> usize {
        self.data_strips() + self.parity_strips()
    }

    /// Bytes of one strip of one stripe: 512 / d.
    ///
    /// Meaningless (and 0 for d = 0) on an invalid policy.
    pub fn strip_size(&self) -> usize {
        STRIPE_SIZE.checked_div(self.data_strips()).unwrap_or(0)
    }

    /// The whole stripes covering object bytes `[offset, offset + len)`:
    /// stripes `[offset / 512, ceil((offset + len) / 512))`, the range the
    /// gateway reads, encodes and sends (§8). Errors if the policy is
    /// invalid or the end overflows.
    pub fn stripe_range(&self, offset: u64, len: u64) -> Result<StripeRange, EcError> {
        self.validate()?;
        let stripe = STRIPE_SIZE as u64;
        let end = offset.checked_add(len).ok_or(EcError::RangeOverflow)?;
        let first = offset / stripe;
        Ok(StripeRange {
            first_stripe: first,
            nr_stripes: end.div_ceil(stripe) - first,
            strip_size: self.strip_size() as u64,
        })
    }
}

/// A run of whole stripes of an object, with the matching byte ranges in
/// the object and in each strip file (`<oid>_<j>`).
///
/// The gateway turns a client's byte range into one of these, reads or
/// writes `strip_offset()..+strip_len()` on each target, and joins or
/// splits `object_offset()..+object_len()` of object data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripeRange {
    /// Index of the first stripe.
    pub first_stripe: u64,
    /// Number of stripes.
    pub nr_stripes: u64,
    /// Strip size of the policy (512 / d).
    pub strip_size: u64,
}

impl StripeRange {
    /// Offset in the object of the first stripe.
    pub fn object_offset(&self) -> u64 {
        self.first_stripe * STRIPE_SIZE as u64
    }

    /// Object bytes covered: whole stripes.
    pub fn object_len(&self) -> u64 {
        self.nr_stripes * STRIPE_SIZE as u64
    }

    /// Offset in every strip file (the peer request's `offset`).
    pub fn strip_offset(&self) -> u64 {
        self.first_stripe * self.strip_size
    }

    /// Bytes in every strip file (the peer request's `data_length`).
    pub fn strip_len(&self) -> u64 {
        self.nr_stripes * self.strip_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_policy_table_of_section_14() {
        for (cp, d, p, copies, strip) in [
            (0x11, 2, 1, 3, 256),
            (0x22, 4, 2, 6, 128),
            (0x43, 8, 3, 11, 64),
            (0x8f, 16, 15, 31, 32),
        ] {
            let policy = EcPolicy::from_copy_policy(cp).unwrap();
            assert_eq!(policy, EcPolicy { d, p });
            assert_eq!(policy.copy_policy(), cp);
            assert_eq!(policy.nr_copies(), copies);
            assert_eq!(policy.strip_size(), strip);
        }
    }

    #[test]
    fn every_copy_policy_byte() {
        assert_eq!(EcPolicy::from_copy_policy(0), None);
        let mut valid = 0;
        for cp in 0..=255u8 {
            if let Some(policy) = EcPolicy::from_copy_policy(cp) {
                assert_eq!(policy.copy_policy(), cp);
                assert!(policy.nr_copies() <= 31);
                valid += 1;
            }
        }
        assert_eq!(valid, 4 * 15);
    }

    #[test]
    fn invalid_policies() {
        for (d, p) in [(0, 1), (3, 1), (6, 2), (32, 1), (4, 0), (4, 16), (16, 16)] {
            assert_eq!(
                EcPolicy::new(d, p),
                Err(EcError::InvalidPolicy { d, p }),
                "{d}:{p}"
            );
        }
        let bad = EcPolicy { d: 0, p: 0 };
        assert_eq!(bad.strip_size(), 0);
        assert!(bad.stripe_range(0, 512).is_err());
    }

    #[test]
    fn stripe_ranges() {
        let policy = EcPolicy::new(4, 2).unwrap();
        let r = policy.stripe_range(1000, 100).unwrap();
        assert_eq!((r.first_stripe, r.nr_stripes), (1, 2));
        assert_eq!((r.object_offset(), r.object_len()), (512, 1024));
        assert_eq!((r.strip_offset(), r.strip_len()), (128, 256));

        let r = policy.stripe_range(4096, 4096).unwrap();
        assert_eq!((r.object_offset(), r.object_len()), (4096, 4096));
        assert_eq!((r.strip_offset(), r.strip_len()), (1024, 1024));

        // Empty ranges: aligned → nothing, unaligned → the stripe around it.
        assert_eq!(policy.stripe_range(1024, 0).unwrap().nr_stripes, 0);
        assert_eq!(policy.stripe_range(1025, 0).unwrap().nr_stripes, 1);

        assert_eq!(
            policy.stripe_range(u64::MAX, 1),
            Err(EcError::RangeOverflow)
        );
        let r = policy.stripe_range(u64::MAX, 0).unwrap();
        assert_eq!(r.first_stripe, u64::MAX / 512);
    }
}
