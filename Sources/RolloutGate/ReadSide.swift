#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CRolloutSync
import Synchronization

/// The gate's read-copy-update: how a check reads the published snapshot without a lock and
/// without writing memory another thread writes, and when an unpublished snapshot may be freed.
///
/// Readers. Each thread that checks a feature owns one ``Reader`` (found through a pthread key,
/// registered once). A check stores the current ``epoch`` in its reader's `active` word, loads
/// the published pointer, decides through it without retaining it, and stores 0 again. Those
/// two stores go to a cache line only that thread writes; nothing else is written.
///
/// Writers (the refresher, one at a time) publish a new object by swapping the pointer, then
/// hand the old one to ``Retired``, tagged with the epoch they advance: `tag = epoch++`. A
/// reader that loaded an epoch greater than `tag` did so after the swap (the epoch is read with
/// acquire and advanced with release, after the swap), so it can only see the new object. A
/// retired object is released once every reader is either idle or active with an epoch greater
/// than its tag.
///
/// The one subtle case is a reader that has stored its epoch but whose store the writer cannot
/// see yet (stores may be delayed behind later loads). Before it scans the readers, the writer
/// runs membarrier(2), which puts a full memory barrier on every running thread of the process:
/// after it, either the reader's store is visible, or the reader had not yet loaded the pointer
/// and will load the new one. Where membarrier is unavailable (not Linux, or an old kernel)
/// readers issue a full fence after their store instead, and the writer a full fence before its
/// scan: the classic store-fence-load pairing, slower but as safe.
///
/// A retired object whose readers are still active is kept and released at the next attempt:
/// reclamation never waits, and a check never waits for it.
final class ReadSide: Sendable {
    /// One thread's read-side state, alone on its cache lines.
    final class Reader: Sendable {
        // Padding keeps `active` off the lines of neighbouring allocations (other threads' readers).
        private let before: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        /// The epoch the current read started in; 0 when the thread is not reading.
        let active = Atomic<UInt64>(0)
        /// Which stripe of a ``StripedCounts`` this thread counts in: its own (below
        /// ``ReadSide/stripes``), or the one all further threads share.
        let stripe: Int
        /// Whether a live thread owns this reader (an exited thread's reader is reused).
        let owned = Atomic<Bool>(true)
        private let after: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

        init(stripe: Int) { self.stripe = stripe }
    }

    /// The process's one read side. Gates keep a reference to it, so a check reads these
    /// fields through a stored property instead of a lazily initialized global (whose every
    /// access is a `swift_once` call).
    static let shared = ReadSide()

    /// Advanced by every retirement; a reader records the value it saw.
    let epoch = Atomic<UInt64>(1)
    /// Whether membarrier(2) does the readers' fencing (see the type's comment).
    let expedited: Bool
    /// How many threads count in stripes of their own: twice the processors (at least 4, at
    /// most 64). Threads beyond that share one more stripe.
    let stripes: Int
    private let registry = Mutex<[Reader]>([])
    private let key: pthread_key_t

    private init() {
        expedited = CRolloutSync_membarrier_register() == 0
        let processors = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var count = 4
        while count < min(64, 2 * processors) { count *= 2 }
        stripes = count
        var key = pthread_key_t()
        // The destructor runs when a thread exits: its reader, idle by then, can serve a new thread.
        pthread_key_create(&key) { pointer in
            guard let pointer else { return }
            Unmanaged<Reader>.fromOpaque(pointer).takeUnretainedValue().owned.store(false, ordering: .releasing)
        }
        self.key = key
    }

    /// Runs `body` as a read: pointers loaded inside it stay valid until it returns. `body`
    /// gets the thread's stripe for counting. Reads may nest.
    @inline(__always)
    func read<Result>(_ body: (_ stripe: Int) -> Result) -> Result {
        let pointer = pthread_getspecific(key) ?? register()
        return Unmanaged<Reader>.fromOpaque(pointer)._withUnsafeGuaranteedRef { reader in
            let outer = reader.active.load(ordering: .relaxed) != 0
            if !outer {
                reader.active.store(epoch.load(ordering: .acquiring), ordering: .relaxed)
                if expedited { CRolloutSync_compiler_barrier() } else { atomicMemoryFence(ordering: .sequentiallyConsistent) }
            }
            let result = body(reader.stripe)
            if !outer { reader.active.store(0, ordering: .releasing) }
            return result
        }
    }

    /// The calling thread's first read: a reader of its own (or an exited thread's).
    @inline(never)
    private func register() -> UnsafeMutableRawPointer {
        let reader = registry.withLock { readers -> Reader in
            if let free = readers.first(where: { $0.owned.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged }) {
                return free
            }
            let reader = Reader(stripe: min(readers.count, stripes))
            readers.append(reader)
            return reader
        }
        // The registry keeps every reader alive for the life of the process.
        let pointer = Unmanaged.passUnretained(reader).toOpaque()
        pthread_setspecific(key, pointer)
        return pointer
    }

    /// The lowest epoch a read in progress started in, or nil when no thread is reading; only
    /// valid after ``fenceBeforeScan()``.
    fileprivate func oldestActiveRead() -> UInt64? {
        registry.withLock { readers in
            readers.lazy.map { $0.active.load(ordering: .acquiring) }.filter { $0 != 0 }.min()
        }
    }

    /// The writer's half of the pairing described above; false if the barrier failed (then
    /// nothing may be released this time).
    fileprivate func fenceBeforeScan() -> Bool {
        if expedited { return CRolloutSync_membarrier() == 0 }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return true
    }
}

/// Objects a writer unpublished, each +1 retained, released once no read can still use them.
final class Retired: Sendable {
    // Addresses of the retained objects (a pointer is not Sendable; an address is).
    private let pending = Mutex<[(tag: UInt64, objects: [UInt])]>([])

    /// Hands over objects whose pointers were just replaced; then releases what it can.
    func retire(_ objects: [Unmanaged<AnyObject>]) {
        guard !objects.isEmpty else { return }
        let addresses = objects.map { UInt(bitPattern: $0.toOpaque()) }
        let tag = ReadSide.shared.epoch.wrappingAdd(1, ordering: .sequentiallyConsistent).oldValue
        pending.withLock { $0.append((tag, addresses)) }
        reclaim()
    }

    /// Releases every retired object no read can still hold.
    func reclaim() {
        let releasable = pending.withLock { pending -> [UInt] in
            guard !pending.isEmpty, ReadSide.shared.fenceBeforeScan() else { return [] }
            let oldest = ReadSide.shared.oldestActiveRead() ?? .max
            let (done, kept) = (pending.filter { $0.tag < oldest }, pending.filter { $0.tag >= oldest })
            pending = kept
            return done.flatMap(\.objects)
        }
        Self.release(releasable)
    }

    /// How many retirements wait for a read to end (for tests).
    var waiting: Int { pending.withLock { $0.count } }

    deinit {
        // The owner is being destroyed, so no read through it can be in progress.
        Self.release(pending.withLock { $0.flatMap(\.objects) })
    }

    private static func release(_ addresses: [UInt]) {
        for address in addresses {
            if let pointer = UnsafeRawPointer(bitPattern: address) { Unmanaged<AnyObject>.fromOpaque(pointer).release() }
        }
    }
}

/// Counts split into per-thread cells on separate cache lines, so threads counting at once do
/// not share a line, and read by the refresher: the decision tallies (2 counts: on, off) and
/// the cohort recorder's (``CohortTally``).
///
/// The first ``ReadSide/stripes`` stripes each have one writer, the thread whose reader owns
/// that stripe (a reader serves one live thread at a time), so a count there is a plain load
/// and store: no locked instruction on the hot path. Threads beyond those share the last
/// stripe and add atomically. Cells only grow; ``take()`` reports what grew since its last call.
final class StripedCounts: @unchecked Sendable {
    // @unchecked: `cells` is written only through the C atomic helpers (an owned stripe by its
    // one thread, the shared stripe by atomic adds), read with relaxed loads, and freed in
    // deinit, when no check can reach these counts any more. `seen` is under its mutex.
    private let cells: UnsafeMutableRawPointer
    private let ownedStripes: Int
    /// How many counts each stripe holds.
    let width: Int
    /// Bytes from one stripe to the next: whole cache lines.
    private let stride: Int
    private let seen: Mutex<[UInt64]>
    private static let lineBytes = 64

    init(width: Int) {
        self.width = width
        ownedStripes = ReadSide.shared.stripes
        stride = (width * MemoryLayout<UInt64>.size + Self.lineBytes - 1) / Self.lineBytes * Self.lineBytes
        let bytes = (ownedStripes + 1) * stride
        cells = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Self.lineBytes)
        cells.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        seen = Mutex([UInt64](repeating: 0, count: width * (ownedStripes + 1)))
    }

    deinit { cells.deallocate() }

    /// Adds `amount` to count `index` (below ``width``) in `stripe`'s cells.
    @inline(__always)
    func add(_ amount: UInt64 = 1, to index: Int, stripe: Int) {
        let cell = (cells + stripe &* stride).assumingMemoryBound(to: UInt64.self) + index
        if stripe < ownedStripes {
            CRolloutSync_add_owned(cell, amount)
        } else {
            CRolloutSync_add(cell, amount)
        }
    }

    /// What each count grew by since the last call, over all stripes.
    func take() -> [UInt64] {
        seen.withLock { seen in
            var grown = [UInt64](repeating: 0, count: width)
            for stripe in 0...ownedStripes {
                let row = (cells + stripe * stride).assumingMemoryBound(to: UInt64.self)
                for index in 0..<width {
                    let now = CRolloutSync_load(row + index)
                    grown[index] &+= now &- seen[stripe * width + index]
                    seen[stripe * width + index] = now
                }
            }
            return grown
        }
    }
}

/// An atomically replaceable +1 reference to an immutable object, read inside
/// ``ReadSide/read(_:)`` without retaining it; what a replacement unpublishes goes to ``Retired``.
struct AtomicReference<Object: AnyObject & Sendable>: ~Copyable, Sendable {
    // The object's address, 0 for none (a pointer type is not Sendable; an address is).
    private let address = Atomic<UInt>(0)

    init() {}

    /// Calls `body` with the current object, borrowed: valid only inside a read (or for the
    /// writer, which alone retires). Nil when there is none.
    @inline(__always)
    func withCurrent<Result>(_ body: (Object) -> Result) -> Result? {
        guard let pointer = UnsafeRawPointer(bitPattern: address.load(ordering: .acquiring)) else { return nil }
        return Unmanaged<Object>.fromOpaque(pointer)._withUnsafeGuaranteedRef(body)
    }

    /// Publishes `object` (retained) and returns what it replaced, still retained, to retire.
    func replace(with object: Object?) -> Unmanaged<AnyObject>? {
        let new = object.map { UInt(bitPattern: Unmanaged.passRetained($0).toOpaque()) } ?? 0
        let old = address.exchange(new, ordering: .acquiringAndReleasing)
        guard let pointer = UnsafeRawPointer(bitPattern: old) else { return nil }
        return Unmanaged<AnyObject>.fromOpaque(pointer)
    }

    deinit {
        // The owner is going away, so no read through it is in progress.
        if let pointer = UnsafeRawPointer(bitPattern: address.load(ordering: .acquiring)) {
            Unmanaged<Object>.fromOpaque(pointer).release()
        }
    }
}
