//! (d) Fixed buffers over spans: each `Span` built (folios cut mid-folio, a
//! THP next to base pages, one page mapped twice), registered, and written
//! out whole with `WRITE_FIXED`; the output compared with the mapping byte
//! for byte, the first difference named by whose stamp it holds.

use std::os::fd::AsRawFd;

use cowgup_fixtures::anon::{self, fault_in_thp};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin::FixedBuffer;
use cowgup_fixtures::stamp::{identify, Pattern, Writer};
use cowgup_fixtures::{env, fail, kb, skip, Step};
use cowgup_harness::{diag, Outcome};
use nix::sys::mman::{MapFlags, MmapAdvise};

use super::{Folio, Span};

/// A mapping to register, and how to clean nothing up (trial processes exit).
struct SpanMemory {
    /// The registered range.
    buffer: Region,
    /// Two addresses that must map one physical page (the setup is proven
    /// by their PFNs, as root).
    twice: Option<(usize, usize)>,
}

/// Spans are checked word by word whatever the run's options: what
/// `WRITE_FIXED` wrote must equal the mapping byte for byte.
fn thorough(unit: usize) -> Pattern {
    Pattern::with_unit(unit, true)
}

/// The span's memory, stamped, and the range to register.
fn span_setup(s: Span) -> Step<SpanMemory> {
    match s {
        Span::Folios {
            folio: Folio::Thp(size),
            n,
        } => thp_folios(size, n),
        Span::Folios {
            folio: Folio::Hugetlb(size),
            n,
        } => hugetlb_folios(size, n),
        Span::ThpThenBasePages(size) => thp_and_base_pages(size, true),
        Span::BasePagesThenThp(size) => thp_and_base_pages(size, false),
        Span::PageTwice => page_twice(),
        Span::HugePageTwice(size) => huge_page_twice(size),
    }
}

/// From the middle of the first of `n` folios of `size` at `r` to the
/// middle of the last (at most 1 MiB of each partial folio).
fn mid_to_mid(r: Region, size: usize, n: usize) -> Region {
    let part = (size / 2).min(1 << 20);
    Region::new(r.addr + size - part, (n - 2) * size + 2 * part)
}

fn thp_folios(size: usize, n: usize) -> Step<SpanMemory> {
    let r = anon::map_thps(size, n)?;
    thorough(env().page_size).fill(r, Writer::Setup);
    Ok(SpanMemory {
        buffer: mid_to_mid(r, size, n),
        twice: None,
    })
}

fn hugetlb_folios(size: usize, n: usize) -> Step<SpanMemory> {
    let flags = MapFlags::MAP_PRIVATE | mem::hugetlb_flags(size);
    let r = mem::map_anon(n * size, RW, flags)
        .or_else(|e| skip(format!("need more free huge pages: {e}")))?;
    thorough(size).fill(r, Writer::Setup);
    Ok(SpanMemory {
        buffer: mid_to_mid(r, size, n),
        twice: None,
    })
}

/// A PMD THP and a NOHUGEPAGE stretch of base pages next to it, the THP
/// first or second; the buffer is the THP and four base pages.
fn thp_and_base_pages(size: usize, thp_first: bool) -> Step<SpanMemory> {
    let page = env().page_size;
    let r = mem::map_aligned(2 * size, RW)?;
    let (lo, hi) = (r.sub(0, size), r.sub(size, size));
    let (thp, base) = if thp_first { (lo, hi) } else { (hi, lo) };
    base.no_thp()?;
    thp.madvise(MmapAdvise::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
    fault_in_thp(thp, size, || thp.sub(0, page).touch_write(page))?;
    thorough(page).fill(r, Writer::Setup);
    let tail = 4 * page;
    Ok(SpanMemory {
        buffer: if thp_first {
            Region::new(thp.addr, size + tail)
        } else {
            Region::new(thp.addr - tail, size + tail)
        },
        twice: None,
    })
}

/// Memfd page 0 mapped at two adjacent addresses, then page 1.
fn page_twice() -> Step<SpanMemory> {
    let page = env().page_size;
    let fd = nix::sys::memfd::memfd_create("cowgup-twice", nix::sys::memfd::MFdFlags::empty())
        .or_else(|e| fail(format!("memfd_create() failed: {e}")))?;
    nix::unistd::ftruncate(&fd, 2 * page as i64)
        .or_else(|e| fail(format!("ftruncate() failed: {e}")))?;
    let at = mem::reserve(3 * page, page)?.addr;
    // Pages 0, 0 and 1 of the memfd, MAP_SHARED, side by side.
    let raw = Some(fd.as_raw_fd());
    for (i, off) in [0, 0, page as i64].into_iter().enumerate() {
        let view = Region::new(at + i * page, page);
        mem::map_fixed(view, RW, MapFlags::MAP_SHARED, raw, off)?;
    }
    let p = thorough(page);
    p.fill(Region::new(at, page), Writer::Setup);
    p.fill(Region::new(at + 2 * page, page), Writer::Setup);
    Ok(SpanMemory {
        buffer: Region::new(at, 3 * page),
        twice: Some((at, at + page)),
    })
}

/// One hugetlb memfd page mapped at two adjacent addresses; the buffer
/// crosses from the first view into the second.
fn huge_page_twice(size: usize) -> Step<SpanMemory> {
    let page = env().page_size;
    let flags = mem::hugetlb_memfd_flags(size);
    let fd = nix::sys::memfd::memfd_create("cowgup-twice-huge", flags).or_else(|e| {
        skip(format!(
            "memfd_create(MFD_HUGETLB, {}) failed: {e}",
            kb(size)
        ))
    })?;
    nix::unistd::ftruncate(&fd, size as i64)
        .or_else(|e| skip(format!("ftruncate() of a hugetlb memfd failed: {e}")))?;
    let at = mem::reserve(2 * size, size)?.addr;
    let raw = Some(fd.as_raw_fd());
    for view in [at, at + size] {
        mem::map_fixed(Region::new(view, size), RW, MapFlags::MAP_SHARED, raw, 0)?;
    }
    let first = Region::new(at, size);
    // Fault the page in (a SIGBUS here would be an empty pool).
    thorough(size).fill(first, Writer::Setup);
    let part = (size / 2).min(1 << 20);
    Ok(SpanMemory {
        buffer: Region::new(at + size - part, 2 * part),
        twice: Some((at + size - page, at + 2 * size - page)),
    })
}

/// (d) Register a buffer over the span; `WRITE_FIXED` it whole into a
/// memfd; the memfd must hold exactly the bytes the mapping holds.
pub(super) fn write_fixed_span(s: Span) -> Step<Outcome> {
    let page = env().page_size;
    let m = span_setup(s)?;
    let buf = m.buffer;
    if let Some((a, b)) = m.twice {
        // Both views are faulted in (read) before their PFNs are compared.
        for at in [a, b] {
            Region::new(at, page).touch_read(page);
        }
        let (pa, pb) = (
            pagemap::entry(a).or_else(fail)?,
            pagemap::entry(b).or_else(fail)?,
        );
        if let (Some(x), Some(y)) = (pa.pfn(), pb.pfn()) {
            if x != y {
                return skip(format!(
                    "the two views of one memfd page got different frames (pfn 0x{x:x} and 0x{y:x})"
                ));
            }
        }
        cowgup_harness::evidence(
            "mapped_twice",
            serde_json::json!({
                "addresses": [format!("0x{a:x}"), format!("0x{b:x}")],
                "pfns": [pa.pfn(), pb.pfn()],
            }),
        );
    } else {
        // Every word was stamped: the mapping must hold its own stamps.
        if let Err(mm) = thorough(page).check(buf, Writer::Setup) {
            return fail(format!("the mapping does not hold what was stamped: {mm}"));
        }
    }
    let out = match write_fixed(buf)? {
        Ok(bytes) => bytes,
        Err(e) => {
            return Ok(Outcome::Fail(format!(
                "registering or writing the fixed buffer ({} bytes at 0x{:x}) failed: {e}",
                buf.len, buf.addr
            )))
        }
    };
    Ok(compare_bytes(buf.bytes(), &out, buf))
}

/// Byte-for-byte comparison, naming the first differing word and whose
/// stamp it holds.
fn compare_bytes(mapped: &[u8], out: &[u8], buf: Region) -> Outcome {
    let page = env().page_size;
    if out.len() != mapped.len() {
        return Outcome::Fail(format!(
            "WRITE_FIXED wrote {} bytes for a {}-byte buffer",
            out.len(),
            mapped.len()
        ));
    }
    let words = |b: &[u8]| -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let (want, got) = (words(mapped), words(out));
    let bad: Vec<usize> = (0..want.len()).filter(|&i| want[i] != got[i]).collect();
    let Some(&first) = bad.first() else {
        diag(format!(
            "evidence: WRITE_FIXED of {} bytes equals the mapping byte for byte",
            buf.len
        ));
        return Outcome::Pass;
    };
    let off = first * 8;
    let found = got[first];
    let story = match identify(found) {
        Some(o) if o.writer == Writer::Nobody => "zeroes".to_string(),
        Some(o) => {
            let buf_first = buf.addr / page;
            match o.page.checked_sub(buf_first) {
                Some(p) if p < buf.len / page => {
                    format!(
                        "{} of buffer page {p}, word {}",
                        o.writer.describe(),
                        o.word
                    )
                }
                _ => format!("{} of a page outside the buffer", o.writer.describe()),
            }
        }
        None => "data that is no stamp (memory outside what was stamped)".into(),
    };
    let mut pages: Vec<usize> = bad.iter().map(|w| w * 8 / page).collect();
    pages.dedup();
    cowgup_harness::evidence(
        "write_fixed",
        serde_json::json!({
            "bytes": buf.len,
            "bad_words": bad.len(),
            "bad_pages": pages.len(),
            "first_offset": off,
            "expected": format!("0x{:016x}", want[first]),
            "found": format!("0x{found:016x}"),
        }),
    );
    Outcome::Fail(format!(
        "WRITE_FIXED output differs from the mapping: {} of {} pages differ; first at +0x{off:x} (buffer \
         page {}): 0x{found:016x} ({story}), the mapping holds 0x{:016x}",
        pages.len(),
        buf.len / page,
        off / page,
        want[first]
    ))
}

/// Register `buf` as fixed buffer 0 of a new ring and return what the kernel
/// reads through the pin, byte for byte. `Ok(Err)`: the kernel refused (with
/// the errno and which step).
fn write_fixed(buf: Region) -> Step<Result<Vec<u8>, String>> {
    match FixedBuffer::try_register(buf)? {
        Ok(mut fixed) => fixed.copy_through_pin(),
        Err(e) => Ok(Err(format!("io_uring_register_buffers(): {e}"))),
    }
}
