#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A snapshot's objects by feature name, for checks by name: open addressing over the names'
/// UTF-8 bytes, built once per snapshot by the refresher and never changed after.
///
/// Why not a `Dictionary<FeatureName, _>`: its lookup seeds, feeds and finalizes a SipHash
/// hasher and compares Strings, most of what a check by name cost over a check by handle
/// (docs/performance.md, "The check"). Here a name is read as two 8-byte words (its first and
/// last eight bytes, overlapping for a short name; see ``Probe``), hashed with one multiply,
/// and compared by those words and its length, which for a name of at most 16 bytes is the
/// whole name; only a longer one compares the rest of its bytes. The hash is not keyed: the
/// table's names are the features the gate reads, which operators choose, and a name looked
/// up that collides with them only walks a probe run (at most half the buckets are used).
///
/// Only valid names go in, so a name found is a valid one: a check by name needs no validation
/// of its own on the hot path.
///
/// Memory safety: both buffers are allocated and filled in `init`, freed in `deinit`, and only
/// read in between, so any number of threads may read them at once (hence `@unchecked
/// Sendable`). The objects are held unretained (copying a retained reference out would write
/// its reference count, a line every checking thread shares): whoever owns the table must
/// keep them alive as long as it; ``Snapshot`` does, through its `entries`.
struct NameTable<Object: AnyObject>: ~Copyable, @unchecked Sendable {
    private struct Bucket {
        /// The object's address; 0 for an empty bucket.
        var object: UInt
        var probe: Probe
        /// Where the name's bytes start in `names` (read only for a name over 16 bytes).
        var nameStart: Int
    }

    private let buckets: UnsafeMutablePointer<Bucket>
    /// `bucket count - 1`; the bucket count is a power of two.
    private let mask: Int
    /// Every name's bytes, one after the other.
    private let names: UnsafeMutablePointer<UInt8>

    /// A table of the valid names among `objects`' keys.
    init(_ objects: [FeatureName: Object]) {
        let valid = objects.filter { $0.key.isValid }
        var count = 2
        while count < 2 * valid.count { count *= 2 }
        mask = count - 1
        buckets = .allocate(capacity: count)
        buckets.initialize(repeating: Bucket(object: 0, probe: Probe(first: 0, last: 0, count: 0), nameStart: 0), count: count)
        let byteCount = valid.keys.reduce(0) { $0 + $1.rawValue.utf8.count }
        names = .allocate(capacity: max(1, byteCount))
        var start = 0
        for (name, object) in valid {
            let bytes = Array(name.rawValue.utf8)
            names.advanced(by: start).initialize(from: bytes, count: bytes.count)
            let probe = bytes.withUnsafeBytes(Probe.init)
            var index = probe.hash & mask
            // Valid names are ASCII, so names the dictionary holds apart differ in their bytes:
            // no bucket is ever taken twice for one name.
            while buckets[index].object != 0 { index = (index &+ 1) & mask }
            buckets[index] = Bucket(object: UInt(bitPattern: Unmanaged.passUnretained(object).toOpaque()), probe: probe, nameStart: start)
            start += bytes.count
        }
    }

    deinit {
        buckets.deallocate()
        names.deallocate()
    }

    /// The object of the name written `name`, unretained: valid while the table's owner is.
    @inline(__always)
    func object(named name: String) -> Unmanaged<Object>? {
        // A native string (every string on Linux) lends its bytes in place; a small one is
        // copied to the stack. Only a bridged NSString (Darwin) takes the copying way.
        if let found = name.utf8.withContiguousStorageIfAvailable({ object(bytes: UnsafeRawBufferPointer($0)) }) {
            return found
        }
        return Array(name.utf8).withUnsafeBytes { object(bytes: $0) }
    }

    @inline(__always)
    private func object(bytes: UnsafeRawBufferPointer) -> Unmanaged<Object>? {
        guard let base = bytes.baseAddress else { return nil }  // empty: never a valid name
        let probe = Probe(bytes)
        var index = probe.hash & mask
        // At most half the buckets are used, so the probe meets an empty one.
        while true {
            let bucket = buckets[index]
            guard let object = UnsafeRawPointer(bitPattern: bucket.object) else { return nil }
            if bucket.probe == probe && (bytes.count <= 16 || memcmp(names + bucket.nameStart, base, bytes.count) == 0) {
                return Unmanaged<Object>.fromOpaque(object)
            }
            index = (index &+ 1) & mask
        }
    }
}

/// A name's length and two 8-byte words read from it: its first and last eight bytes (for 4
/// to 7 bytes, its first and last four; for 1 to 3, its first, middle and last byte). The
/// reads cover every byte of a name of at most 16 bytes, so two such names with equal probes
/// are equal; longer ones must compare their bytes too.
struct Probe: Equatable {
    let first: UInt64
    let last: UInt64
    let count: Int

    init(first: UInt64, last: UInt64, count: Int) {
        (self.first, self.last, self.count) = (first, last, count)
    }

    @inline(__always)
    init(_ bytes: UnsafeRawBufferPointer) {
        count = bytes.count
        guard let base = bytes.baseAddress, count > 0 else {
            (first, last) = (0, 0)
            return
        }
        if count >= 8 {
            var first = base.loadUnaligned(as: UInt64.self)
            // A longer name's middle words are folded into `first`, so names that differ only
            // there still spread over the buckets (their bytes are compared anyway).
            var offset = 8
            while offset &+ 8 < count {
                first = Self.fold(first, base.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
                offset &+= 8
            }
            self.first = first
            last = base.loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self)
        } else if count >= 4 {
            first = UInt64(base.loadUnaligned(as: UInt32.self))
            last = UInt64(base.loadUnaligned(fromByteOffset: count &- 4, as: UInt32.self))
        } else {
            first = UInt64(base.load(as: UInt8.self)) | UInt64(base.load(fromByteOffset: count / 2, as: UInt8.self)) << 8
            last = UInt64(base.load(fromByteOffset: count &- 1, as: UInt8.self))
        }
    }

    /// The bucket to start from: one full-width multiply of the two words, folded.
    @inline(__always)
    var hash: Int { Int(truncatingIfNeeded: Self.fold(first, last ^ UInt64(truncatingIfNeeded: count))) }

    // The constants' top bytes are not ASCII, so for a valid name neither factor is ever 0.
    @inline(__always)
    private static func fold(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let product = (a ^ 0xA076_1D64_78BD_642F).multipliedFullWidth(by: b ^ 0xE703_7ED1_A0B4_28DB)
        return product.high ^ product.low
    }
}
