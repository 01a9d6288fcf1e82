//! Test helpers that forge Automerge chunks byte by byte, and a DEFLATE
//! bomb that costs 2 bits per 258 inflated bytes (zlib's best ratio)
//! without spending the time to compress a gibibyte.

/// The magic bytes of a chunk.
pub(crate) const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Appends `value` as unsigned LEB128.
pub(crate) fn uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends `value` as signed LEB128.
pub(crate) fn sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// An RLE run: `count` copies of the unsigned `value`.
pub(crate) fn run(count: i64, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    sleb(&mut out, count);
    uleb(&mut out, value);
    out
}

/// An RLE literal run of unsigned `values`.
pub(crate) fn literals(values: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    sleb(&mut out, -(values.len() as i64));
    for &value in values {
        uleb(&mut out, value);
    }
    out
}

/// A chunk of `kind` around `body` (the checksum is not checked).
pub(crate) fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend([0, 0, 0, 0, kind]);
    uleb(&mut out, body.len() as u64);
    out.extend(body);
    out
}

/// One column: its spec and data.
pub(crate) struct Col {
    /// The spec, compression bit included.
    spec: u32,
    /// The stored data.
    data: Vec<u8>,
}

impl Col {
    /// An uncompressed column.
    pub(crate) fn plain(spec: u32, data: &[u8]) -> Self {
        Col {
            spec,
            data: data.to_vec(),
        }
    }

    /// A column whose `data` is a DEFLATE stream.
    pub(crate) fn deflated(spec: u32, data: &[u8]) -> Self {
        Col {
            spec: spec | 0b1000,
            data: data.to_vec(),
        }
    }
}

/// Appends `cols`' layout to `meta` and their data to `data`.
fn layout(cols: &[Col], meta: &mut Vec<u8>, data: &mut Vec<u8>) {
    uleb(meta, cols.len() as u64);
    for col in cols {
        uleb(meta, u64::from(col.spec));
        uleb(meta, col.data.len() as u64);
        data.extend(&col.data);
    }
}

/// A change chunk by actor "a" with the op columns `cols`.
pub(crate) fn change(cols: &[Col]) -> Vec<u8> {
    let mut body = vec![0, 1, b'a', 1, 1, 0, 0, 0];
    let mut data = Vec::new();
    layout(cols, &mut body, &mut data);
    body.extend(data);
    chunk(1, &body)
}

/// A document chunk with `actors`, no heads, and the given tables.
pub(crate) fn document(actors: &[&[u8]], changes: &[Col], ops: &[Col]) -> Vec<u8> {
    let mut body = Vec::new();
    uleb(&mut body, actors.len() as u64);
    for actor in actors {
        uleb(&mut body, actor.len() as u64);
        body.extend(*actor);
    }
    body.push(0);
    let (mut change_data, mut op_data) = (Vec::new(), Vec::new());
    layout(changes, &mut body, &mut change_data);
    layout(ops, &mut body, &mut op_data);
    body.extend(change_data);
    body.extend(op_data);
    chunk(0, &body)
}

/// Writes bits least-significant first, as DEFLATE packs them.
struct Bits {
    /// Finished bytes.
    out: Vec<u8>,
    /// Pending bits.
    acc: u64,
    /// How many bits are pending.
    len: u32,
}

impl Bits {
    /// Appends the low `count` bits of `value`.
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.len;
        self.len += count;
        while self.len >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.len -= 8;
        }
    }

    /// Appends a Huffman code, which DEFLATE stores most-significant first.
    fn code(&mut self, code: u64, count: u32) {
        let reversed = (0..count).fold(0, |r, i| (r << 1) | ((code >> i) & 1));
        self.put(reversed, count);
    }
}

/// A raw DEFLATE stream inflating to `len` zero bytes, in one dynamic
/// block whose codes are: literal/length 285 (a 258-byte copy) `0`, literal
/// 0 `10`, end of block `11`; distance 1 `0`. So each 258 bytes cost 2 bits.
pub(crate) fn zeros_bomb(len: u64) -> Vec<u8> {
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        len: 0,
    };
    bomb_header(&mut bits);
    let copies = len.saturating_sub(1) / 258;
    let rest = len.saturating_sub(1) % 258;
    if len > 0 {
        bits.code(0b10, 2);
    }
    for _ in 0..copies {
        bits.put(0, 2);
    }
    for _ in 0..rest {
        bits.code(0b10, 2);
    }
    bits.code(0b11, 2);
    bits.put(0, 7);
    bits.out
}

/// The block header and code tables of [`zeros_bomb`].
fn bomb_header(bits: &mut Bits) {
    bits.put(1, 1); // final block
    bits.put(2, 2); // dynamic Huffman
    bits.put(29, 5); // 286 literal/length codes
    bits.put(0, 5); // 1 distance code
    bits.put(14, 4); // 18 code-length codes, in the order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1
    for length in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        bits.put(length, 3);
    }
    // Code-length codes: 18 is `0`, 1 is `10`, 2 is `11`. The lengths:
    // literal 0 → 2, 1..=255 → 0, 256 → 2, 257..=284 → 0, 285 → 1; distance 0 → 1.
    bits.code(0b11, 2);
    for zeros in [138, 117] {
        bits.code(0, 1);
        bits.put(zeros - 11, 7);
    }
    bits.code(0b11, 2);
    bits.code(0, 1);
    bits.put(28 - 11, 7);
    bits.code(0b10, 2);
    bits.code(0b10, 2);
}
