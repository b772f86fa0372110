//! Two X25519 functions of one point, as a relay computes them in every CREATE: `X^y` and `X^b`
//! (the client's key with the relay's ephemeral and onion secrets).
//!
//! The point must be on Curve25519 (every public key made as RFC 7748 says is; a u-coordinate
//! on the curve's quadratic twist is refused, so a peer cannot make the relay do more work than
//! an honest client does). For a point on the curve the results are exactly those of the
//! X25519 function: the point is mapped once to Edwards form, multiplied there by both clamped
//! scalars (curve25519-dalek picks its vector backend at run time where the CPU has one) and
//! mapped back, about 25 % less work than two Montgomery ladders.

use curve25519_dalek::montgomery::MontgomeryPoint;

/// `(X25519(a, u), X25519(b, u))`, or `None` if `u` (bit 255 ignored, taken mod p) is not the
/// u-coordinate of a point on Curve25519.
pub fn two_scalars_one_point(a: &[u8; 32], b: &[u8; 32], u: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
    // The sign is irrelevant: a point and its negative have the same u-coordinate, and so have
    // their multiples. Clamped scalars are multiples of 8, so a torsion part vanishes as it
    // does in the ladder. `to_edwards` fails exactly for points of the twist (u = -1 is one).
    let p = MontgomeryPoint(*u).to_edwards(0)?;
    Some((p.mul_clamped(*a).to_montgomery().0, p.mul_clamped(*b).to_montgomery().0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use x25519_dalek::x25519;

    /// Equal to X25519 on the curve; `None` off it. True if on the curve.
    fn agrees(a: [u8; 32], b: [u8; 32], u: [u8; 32]) -> bool {
        match two_scalars_one_point(&a, &b, &u) {
            Some(both) => {
                assert_eq!(both, (x25519(a, u), x25519(b, u)), "u = {u:02x?}");
                true
            }
            None => false,
        }
    }

    proptest! {
        /// Any 32 bytes: some have bit 255 set or are non-canonical; about half are on the twist.
        #[test]
        fn equals_the_x25519_function_for_any_point_on_the_curve(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), u in any::<[u8; 32]>()) {
            agrees(a, b, u);
        }

        /// Public keys as honest clients make them are always on the curve.
        #[test]
        fn every_public_key_is_on_the_curve(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), x in any::<[u8; 32]>()) {
            prop_assert!(agrees(a, b, x25519(x, x25519_dalek::X25519_BASEPOINT_BYTES)));
        }
    }

    /// The curve and its twist each hold about half of all u-coordinates.
    #[test]
    fn about_half_of_all_coordinates_are_refused() {
        let on_curve = (0u32..512).filter(|i| {
            let mut u = [0u8; 32];
            u[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            u[31] = (*i % 127) as u8;
            agrees([1; 32], [2; 32], u)
        });
        let n = on_curve.count();
        assert!((160..=352).contains(&n), "{n} of 512 on the curve");
    }

    /// Points of small order on the curve (all-zero results), u = -1 (on the twist), p and
    /// p + 1, each also with bit 255 set.
    #[test]
    fn edge_points() {
        let p_minus = |k: u8| {
            let mut v = [0xffu8; 32];
            v[0] = 0xed - k;
            v[31] = 0x7f;
            v
        };
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut p_plus_one = p_minus(0);
        p_plus_one[0] = 0xee;
        let small_order = [
            [0u8; 32],
            one,
            p_minus(0),
            p_plus_one,
            hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            hex32("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        ];
        for e in small_order {
            let mut high = e;
            high[31] |= 0x80;
            for u in [e, high] {
                assert_eq!(two_scalars_one_point(&[0x5a; 32], &[0xa5; 32], &u), Some(([0; 32], [0; 32])), "u = {u:02x?}");
            }
        }
        let minus_one = p_minus(1);
        let mut high = minus_one;
        high[31] |= 0x80;
        for u in [minus_one, high] {
            assert_eq!(two_scalars_one_point(&[0x5a; 32], &[0xa5; 32], &u), None, "-1 is on the twist");
        }
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
