//! Unit tests of the indexed dataset: round trips, writer semantics, merge, and every corruption
//! `open` and `check` must catch (the corrupt files are written here, byte by byte).

use std::path::{Path, PathBuf};

use openseek_common::{AtomicOutputs, ExitCode, Failure};

use super::*;

/// Documents, each a list of sequences.
type Docs<'a> = &'a [&'a [&'a [u32]]];

fn write(prefix: &Path, dtype: DType, docs: Docs) -> WriteSummary {
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(prefix, dtype, &mut out).unwrap();
    for doc in docs {
        for seq in *doc {
            w.add_sequence(seq).unwrap();
        }
        w.end_document();
    }
    let summary = w.finish(&mut out).unwrap();
    out.commit().unwrap();
    summary
}

/// A `.idx` assembled field by field, as Megatron's `_IndexWriter` lays it out.
fn raw_idx(code: u8, lengths: &[i32], pointers: &[i64], docs: &[i64], modes: Option<&[i8]>) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend(1u64.to_le_bytes());
    b.push(code);
    b.extend((lengths.len() as u64).to_le_bytes());
    b.extend((docs.len() as u64).to_le_bytes());
    lengths.iter().for_each(|x| b.extend(x.to_le_bytes()));
    pointers.iter().for_each(|x| b.extend(x.to_le_bytes()));
    docs.iter().for_each(|x| b.extend(x.to_le_bytes()));
    if let Some(m) = modes {
        b.extend(m.iter().map(|&x| x as u8));
    }
    b
}

const DOCS: Docs = &[&[&[1, 2, 3], &[4]], &[&[5, 6]], &[&[7], &[], &[8, 9, 10, 11]]];

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn round_trip_every_dtype() {
    let dir = tmp();
    for dtype in DType::ALL {
        let prefix = dir.path().join(format!("rt_{}", dtype.name()));
        // Largest id of the dtype (within u32) to prove the full range survives.
        let top = dtype.max_token().min(u32::MAX as u64) as u32;
        let docs: Docs = &[&[&[1, 2, 3], &[4]], &[&[5, 6]], &[&[7], &[], &[8, 9, 10]]];
        let mut all: Vec<Vec<&[u32]>> = docs.iter().map(|d| d.to_vec()).collect();
        let top_seq = [0, top];
        all.push(vec![&top_seq]);
        let all_refs: Vec<&[&[u32]]> = all.iter().map(|d| d.as_slice()).collect();
        let summary = write(&prefix, dtype, &all_refs);
        assert_eq!(summary, WriteSummary { dtype, sequences: 7, documents: 4, tokens: 12, bin_bytes: 12 * dtype.size() as u64 });

        let ds = IndexedDataset::open(&prefix).unwrap();
        assert_eq!(ds.dtype(), dtype);
        assert_eq!(ds.num_sequences(), 7);
        assert_eq!(ds.num_documents(), 4);
        assert_eq!(ds.total_tokens(), 12);
        assert_eq!(ds.sequence_lengths(), vec![3, 1, 2, 1, 0, 3, 2]);
        let item = dtype.size() as u64;
        assert_eq!(ds.sequence_pointers(), [0, 3, 4, 6, 7, 7, 10].map(|x| x * item).to_vec());
        assert_eq!(ds.document_indices(), vec![0, 2, 3, 6, 7]);
        assert_eq!(ds.document_sequences(2), 3..6);
        assert_eq!(ds.document_index(4), 7);
        assert!(!ds.has_sequence_modes());
        assert_eq!(ds.sequence_mode(0), None);
        let seqs: Vec<Vec<u32>> = (0..7).map(|i| ds.sequence(i).to_vec_u32()).collect();
        assert_eq!(seqs, vec![vec![1, 2, 3], vec![4], vec![5, 6], vec![7], vec![], vec![8, 9, 10], vec![0, top]]);
        assert_eq!(ds.sequence(6).get(1), top as i64);
        assert_eq!(ds.sequence(6).dtype(), dtype);
        assert_eq!(ds.sequence_slice(5, 1, 2).to_vec_i64(), vec![9, 10]);
        assert_eq!(ds.sequence_slice(5, 3, 0).len(), 0);
        assert_eq!(ds.sequences_tokens(1..4).to_vec_i64(), vec![4, 5, 6, 7]);
        assert_eq!(ds.all_tokens().len(), 12);

        // The files are exactly Megatron's layout.
        let bin = std::fs::read(bin_path(&prefix)).unwrap();
        let mut expect_bin = Vec::new();
        dtype.encode_u32(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, top], &mut expect_bin).unwrap();
        assert_eq!(bin, expect_bin, "{dtype}");
        assert_eq!(ds.sequence(2).as_bytes(), &expect_bin[4 * dtype.size()..6 * dtype.size()]);
        let idx = std::fs::read(idx_path(&prefix)).unwrap();
        let ptrs: Vec<i64> = [0, 3, 4, 6, 7, 7, 10].iter().map(|x| x * item as i64).collect();
        assert_eq!(idx, raw_idx(dtype.code(), &[3, 1, 2, 1, 0, 3, 2], &ptrs, &[0, 2, 3, 6, 7], None), "{dtype}");
    }
}

#[test]
fn document_of_sequence_and_sequence_at_byte() {
    let dir = tmp();
    let prefix = dir.path().join("x");
    // Document 1 is empty (end_document twice); sequence 3 is empty.
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&prefix, DType::I32, &mut out).unwrap();
    w.add_sequence(&[1, 2]).unwrap();
    w.add_sequence(&[3]).unwrap();
    w.end_document();
    w.end_document();
    w.add_sequence(&[4]).unwrap();
    w.add_sequence(&[]).unwrap();
    w.add_sequence(&[5, 6]).unwrap();
    w.end_document();
    assert_eq!((w.num_sequences(), w.num_documents(), w.total_tokens()), (5, 3, 6));
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(ds.document_indices(), vec![0, 2, 2, 5]);
    assert_eq!((0..5).map(|i| ds.document_of_sequence(i)).collect::<Vec<_>>(), vec![0, 0, 2, 2, 2]);
    assert_eq!(ds.document_sequences(1), 2..2);
    assert_eq!((0..6).map(|t| ds.sequence_at_byte(t * 4)).collect::<Vec<_>>(), vec![0, 0, 1, 2, 4, 4]);
    let report = check(&prefix).unwrap();
    assert_eq!((report.empty_sequences, report.empty_documents, report.longest_sequence), (1, 1, 2));
    assert_eq!((report.min_token, report.max_token), (Some(1), Some(6)));
}

#[test]
fn empty_dataset_round_trips() {
    let dir = tmp();
    let prefix = dir.path().join("empty");
    let s = write(&prefix, DType::U16, &[]);
    assert_eq!((s.sequences, s.documents, s.tokens, s.bin_bytes), (0, 0, 0, 0));
    assert_eq!(std::fs::read(idx_path(&prefix)).unwrap(), raw_idx(8, &[], &[], &[0], None));
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!((ds.num_sequences(), ds.num_documents(), ds.total_tokens()), (0, 0, 0));
    assert!(ds.all_tokens().is_empty());
    assert!(ds.sequences_tokens(0..0).is_empty());
    let r = check(&prefix).unwrap();
    assert_eq!((r.min_token, r.max_token), (None, None));
}

#[test]
fn token_ids_out_of_range_are_rejected_and_nothing_is_recorded() {
    let dir = tmp();
    let prefix = dir.path().join("r");
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&prefix, DType::U16, &mut out).unwrap();
    w.add_sequence(&[65535]).unwrap();
    let err = w.add_sequence(&[1, 2, 65536]).unwrap_err();
    assert_eq!(err.code, ExitCode::DataErr);
    assert!(err.message.contains("65536") && err.message.contains("uint16") && err.message.contains("sequence 1"), "{}", err.message);
    assert_eq!((w.num_sequences(), w.total_tokens()), (1, 1));
    w.end_document();
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(ds.bin_bytes(), 2);
    assert_eq!(ds.sequence(0).to_vec_u32(), vec![65535]);
    // OpenSeek's vocabulary needs int32.
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&dir.path().join("v"), DType::for_vocab_size(151851), &mut out).unwrap();
    w.add_document(&[151849, 151850]).unwrap();
}

#[test]
fn unfinished_or_uncommitted_writer_leaves_nothing() {
    let dir = tmp();
    let prefix = dir.path().join("gone");
    {
        let mut out = AtomicOutputs::new();
        let mut w = IndexedDatasetWriter::create(&prefix, DType::I32, &mut out).unwrap();
        w.add_document(&[1, 2, 3]).unwrap();
        // neither finished nor committed
    }
    {
        let mut out = AtomicOutputs::new();
        let mut w = IndexedDatasetWriter::create(&prefix, DType::I32, &mut out).unwrap();
        w.add_document(&[1, 2, 3]).unwrap();
        w.finish(&mut out).unwrap();
        // finished, not committed
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn finish_refuses_sequences_outside_a_document() {
    let dir = tmp();
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&dir.path().join("p"), DType::I32, &mut out).unwrap();
    w.add_document(&[1]).unwrap();
    w.add_sequence(&[2]).unwrap();
    let err = w.finish(&mut out).unwrap_err();
    assert!(err.message.contains("1 sequence(s) were added after the last end_document"), "{}", err.message);
}

#[test]
fn raw_token_copy_needs_the_same_dtype() {
    let dir = tmp();
    let src = dir.path().join("src");
    write(&src, DType::I16, DOCS);
    let ds = IndexedDataset::open(&src).unwrap();
    let dst = dir.path().join("dst");
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&dst, DType::I16, &mut out).unwrap();
    for doc in 0..ds.num_documents() {
        for s in ds.document_sequences(doc) {
            w.add_sequence_tokens(ds.sequence(s)).unwrap();
        }
        w.end_document();
    }
    let vals = [1u16];
    let err = w.add_sequence_tokens(Tokens::U16(&vals)).unwrap_err();
    assert!(err.message.contains("cannot add uint16 tokens to a int16 dataset"), "{}", err.message);
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
    for ext in ["bin", "idx"] {
        assert_eq!(std::fs::read(src.with_extension(ext)).unwrap(), std::fs::read(dst.with_extension(ext)).unwrap());
    }
}

#[test]
fn merge_concatenates_like_add_index() {
    let dir = tmp();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    write(&a, DType::U16, &[&[&[1, 2], &[3]], &[&[4]]]);
    write(&b, DType::U16, &[&[&[5]], &[&[6, 7], &[], &[8]]]);
    let m = dir.path().join("m");
    let mut out = AtomicOutputs::new();
    let report = merge_detailed(&[a.clone(), b.clone()], &m, &mut out).unwrap();
    out.commit().unwrap();
    assert_eq!(report.output, WriteSummary { dtype: DType::U16, sequences: 7, documents: 4, tokens: 8, bin_bytes: 16 });
    assert_eq!(report.inputs.iter().map(|s| s.sequences).collect::<Vec<_>>(), vec![3, 4]);
    let ds = IndexedDataset::open(&m).unwrap();
    assert_eq!(ds.document_indices(), vec![0, 2, 3, 4, 7]);
    assert_eq!(ds.sequence_lengths(), vec![2, 1, 1, 1, 2, 0, 1]);
    assert_eq!(ds.all_tokens().to_vec_u32(), (1..=8).collect::<Vec<u32>>());
    // Merging into a writer that already holds documents offsets the indices (add_index).
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&dir.path().join("w"), DType::U16, &mut out).unwrap();
    w.add_document(&[9]).unwrap();
    w.add_dataset(&IndexedDataset::open(&b).unwrap()).unwrap();
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
    assert_eq!(IndexedDataset::open(&dir.path().join("w")).unwrap().document_indices(), vec![0, 1, 2, 5]);
}

#[test]
fn merge_refuses_mixed_dtypes_naming_the_odd_one_and_writes_nothing() {
    let dir = tmp();
    let a = dir.path().join("a");
    let b = dir.path().join("odd");
    write(&a, DType::U16, &[&[&[1]]]);
    write(&b, DType::I32, &[&[&[1]]]);
    let m = dir.path().join("m");
    let mut out = AtomicOutputs::new();
    let err = merge(&[a.clone(), b.clone()], &m, &mut out).unwrap_err();
    drop(out);
    assert_eq!(err.code, ExitCode::DataErr);
    assert!(err.message.contains(&*b.to_string_lossy()) && err.message.contains("int32") && err.message.contains("uint16"), "{}", err.message);
    assert!(!bin_path(&m).exists() && !idx_path(&m).exists());
    let err = merge(std::slice::from_ref(&a), &a, &mut AtomicOutputs::new()).unwrap_err();
    assert_eq!(err.code, ExitCode::Usage);
    assert_eq!(merge(&[], &m, &mut AtomicOutputs::new()).unwrap_err().code, ExitCode::Usage);
}

#[test]
fn sequence_modes_are_read_written_and_merged() {
    let dir = tmp();
    let p = dir.path().join("mm");
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create_multimodal(&p, DType::I32, &mut out).unwrap();
    w.add_sequence_with_mode(&[1, 2], 3).unwrap();
    w.add_sequence(&[3]).unwrap();
    w.end_document();
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
    assert_eq!(std::fs::read(idx_path(&p)).unwrap(), raw_idx(4, &[2, 1], &[0, 8], &[0, 2], Some(&[3, 0])));
    let ds = IndexedDataset::open(&p).unwrap();
    assert!(ds.has_sequence_modes());
    assert_eq!((ds.sequence_mode(0), ds.sequence_mode(1)), (Some(3), Some(0)));
    let m = dir.path().join("m");
    let mut out = AtomicOutputs::new();
    merge(&[p.clone(), p.clone()], &m, &mut out).unwrap();
    out.commit().unwrap();
    let merged = IndexedDataset::open(&m).unwrap();
    assert_eq!((0..4).map(|i| merged.sequence_mode(i).unwrap()).collect::<Vec<_>>(), vec![3, 0, 3, 0]);
    let plain = dir.path().join("plain");
    write(&plain, DType::I32, &[&[&[1]]]);
    let err = merge(&[p.clone(), plain], &dir.path().join("x"), &mut AtomicOutputs::new()).unwrap_err();
    assert!(err.message.contains("multimodal"), "{}", err.message);
}

#[test]
fn strip_extension_and_paths() {
    assert_eq!(strip_extension(Path::new("d/x.bin")), PathBuf::from("d/x"));
    assert_eq!(strip_extension(Path::new("d/x.idx")), PathBuf::from("d/x"));
    assert_eq!(strip_extension(Path::new("d/x.v1")), PathBuf::from("d/x.v1"));
    // Extensions are appended, never substituted: a dotted prefix keeps its dot.
    assert_eq!(idx_path(Path::new("d/x.v1")), PathBuf::from("d/x.v1.idx"));
}

// ---- corruption: each case writes a broken pair and expects a precise error ----

/// A valid 3-sequence int32 shard: lengths [2, 0, 3], documents [0, 1, 3].
fn good_idx() -> Vec<u8> {
    raw_idx(4, &[2, 0, 3], &[0, 8, 8], &[0, 1, 3], None)
}
const GOOD_BIN_LEN: usize = 20;

fn open_with(idx: &[u8], bin_len: usize) -> (Failure, PathBuf, tempfile::TempDir) {
    let dir = tmp();
    let prefix = dir.path().join("bad");
    std::fs::write(idx_path(&prefix), idx).unwrap();
    std::fs::write(bin_path(&prefix), vec![0u8; bin_len]).unwrap();
    let err = IndexedDataset::open(&prefix).expect_err("must be rejected");
    (err, prefix, dir)
}

fn expect_data(idx: &[u8], bin_len: usize, needles: &[&str]) {
    let (err, prefix, _dir) = open_with(idx, bin_len);
    assert_eq!(err.code, ExitCode::DataErr, "{}", err.message);
    assert!(err.message.contains(&*prefix.to_string_lossy()), "no file named: {}", err.message);
    for n in needles {
        assert!(err.message.contains(n), "{:?} not in: {}", n, err.message);
    }
}

#[test]
fn the_good_fixture_opens() {
    let dir = tmp();
    let prefix = dir.path().join("good");
    std::fs::write(idx_path(&prefix), good_idx()).unwrap();
    std::fs::write(bin_path(&prefix), vec![0u8; GOOD_BIN_LEN]).unwrap();
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!((ds.num_sequences(), ds.num_documents(), ds.total_tokens()), (3, 2, 5));
}

#[test]
fn missing_files_are_no_input_naming_the_file() {
    let dir = tmp();
    let prefix = dir.path().join("m");
    let err = IndexedDataset::open(&prefix).unwrap_err();
    assert_eq!(err.code, ExitCode::NoInput);
    assert!(err.message.contains("m.idx"), "{}", err.message);
    std::fs::write(idx_path(&prefix), good_idx()).unwrap();
    let err = IndexedDataset::open(&prefix).unwrap_err();
    assert_eq!(err.code, ExitCode::NoInput);
    assert!(err.message.contains("m.bin") && err.message.contains("does not exist"), "{}", err.message);
    // A prefix given with its extension gets a hint.
    let err = IndexedDataset::open(&bin_path(&prefix)).unwrap_err();
    assert!(err.message.contains("without the extension"), "{}", err.message);
}

#[test]
fn bad_magic_shows_the_bytes() {
    let mut idx = good_idx();
    idx[..4].copy_from_slice(b"PK\x03\x04");
    expect_data(&idx, GOOD_BIN_LEN, &["bad magic b\"PK\\x03\\x04IDX\\x00\\x00\"", "not a Megatron"]);
    expect_data(b"", GOOD_BIN_LEN, &["truncated header", "0 bytes"]);
    expect_data(b"MMIDX", GOOD_BIN_LEN, &["bad magic"]);
}

#[test]
fn truncated_header() {
    expect_data(&good_idx()[..20], GOOD_BIN_LEN, &["truncated header", "20 bytes", "34"]);
}

#[test]
fn wrong_version() {
    let mut idx = good_idx();
    idx[9] = 2;
    expect_data(&idx, GOOD_BIN_LEN, &["index version 2"]);
}

#[test]
fn unknown_dtype_code() {
    let mut idx = good_idx();
    idx[17] = 9;
    expect_data(&idx, GOOD_BIN_LEN, &["unknown dtype code 9"]);
    idx[17] = 0;
    expect_data(&idx, GOOD_BIN_LEN, &["unknown dtype code 0"]);
}

#[test]
fn idx_size_inconsistent_with_counts() {
    let idx = good_idx();
    let n = idx.len();
    expect_data(&idx[..n - 1], GOOD_BIN_LEN, &["size mismatch", &format!("need {n} bytes"), &format!("has {}", n - 1), "truncated"]);
    let mut long = idx.clone();
    long.extend([0, 0]); // N + 2 trailing bytes: neither layout
    expect_data(&long, GOOD_BIN_LEN, &["size mismatch", "trailing bytes"]);
    // Absurd counts.
    let mut absurd = idx.clone();
    absurd[18..26].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
    expect_data(&absurd, GOOD_BIN_LEN, &["cannot fit"]);
}

#[test]
fn exactly_n_trailing_bytes_are_sequence_modes() {
    let dir = tmp();
    let prefix = dir.path().join("modes");
    std::fs::write(idx_path(&prefix), raw_idx(4, &[2, 0, 3], &[0, 8, 8], &[0, 1, 3], Some(&[1, -1, 2]))).unwrap();
    std::fs::write(bin_path(&prefix), vec![0u8; GOOD_BIN_LEN]).unwrap();
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert!(ds.has_sequence_modes());
    assert_eq!((0..3).map(|i| ds.sequence_mode(i).unwrap()).collect::<Vec<_>>(), vec![1, -1, 2]);
}

#[test]
fn negative_length() {
    expect_data(&raw_idx(4, &[2, -1, 3], &[0, 8, 8], &[0, 1, 3], None), GOOD_BIN_LEN, &["sequence 1 has negative length -1"]);
}

#[test]
fn pointers_not_starting_at_zero() {
    expect_data(&raw_idx(4, &[2, 0, 3], &[4, 12, 12], &[0, 1, 3], None), GOOD_BIN_LEN, &["first sequence pointer is 4", "must be 0"]);
}

#[test]
fn pointers_not_cumulative() {
    expect_data(&raw_idx(4, &[2, 0, 3], &[0, 8, 12], &[0, 1, 3], None), GOOD_BIN_LEN, &["sequence pointer 2 is 12", "must start at 8"]);
    expect_data(&raw_idx(4, &[2, 0, 3], &[0, -8, 8], &[0, 1, 3], None), GOOD_BIN_LEN, &["sequence pointer 1 is -8"]);
}

#[test]
fn pointers_overflowing() {
    // i32 lengths cannot sum past 2^63 bytes in a file of test size; a pointer that wrapped
    // (negative as i64) is what an overflowing writer leaves behind.
    expect_data(&raw_idx(5, &[1, 1], &[0, i64::MIN], &[0, 2], None), 16, &["sequence pointer 1 is -9223372036854775808"]);
}

#[test]
fn bin_size_disagrees_with_lengths() {
    expect_data(&good_idx(), GOOD_BIN_LEN - 4, &["bad.bin", "5 int32 tokens = 20 bytes", "has 16 bytes", "shorter", "re-fetch"]);
    expect_data(&good_idx(), GOOD_BIN_LEN + 1, &["has 21 bytes", "longer"]);
}

#[test]
fn document_indices_broken() {
    expect_data(&raw_idx(4, &[2, 0, 3], &[0, 8, 8], &[1, 1, 3], None), GOOD_BIN_LEN, &["document_indices starts with 1"]);
    expect_data(&raw_idx(4, &[2, 0, 3], &[0, 8, 8], &[0, 2, 1, 3], None), GOOD_BIN_LEN, &["decreases at entry 2 (2 then 1)"]);
    expect_data(&raw_idx(4, &[2, 0, 3], &[0, 8, 8], &[0, 1, 2], None), GOOD_BIN_LEN, &["ends at 2", "sequence count 3"]);
    expect_data(&raw_idx(4, &[2, 0, 3], &[0, 8, 8], &[], None), GOOD_BIN_LEN, &["document_indices is empty"]);
}

#[test]
fn check_finds_tokens_that_are_not_ids() {
    let dir = tmp();
    let prefix = dir.path().join("neg");
    std::fs::write(idx_path(&prefix), good_idx()).unwrap();
    let mut bin = Vec::new();
    for t in [1i32, 2, 3, -7, 5] {
        bin.extend(t.to_le_bytes());
    }
    std::fs::write(bin_path(&prefix), &bin).unwrap();
    IndexedDataset::open(&prefix).unwrap(); // structurally fine
    let err = check(&prefix).unwrap_err();
    assert_eq!(err.code, ExitCode::DataErr);
    assert!(err.message.contains("token 1 of sequence 2 (document 1) is -7"), "{}", err.message);
    assert!(IndexedDataset::open(&prefix).unwrap().sequence(2).try_to_vec_u32().is_err());

    let fprefix = dir.path().join("float");
    std::fs::write(idx_path(&fprefix), raw_idx(7, &[2], &[0], &[0, 1], None)).unwrap();
    let bin: Vec<u8> = [3.0f32, 2.5].iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(bin_path(&fprefix), &bin).unwrap();
    let err = check(&fprefix).unwrap_err();
    assert!(err.message.contains("token 1 of sequence 0 (document 0) is 2.5"), "{}", err.message);
}

#[test]
fn check_reports_counts() {
    let dir = tmp();
    let prefix = dir.path().join("c");
    write(&prefix, DType::U16, DOCS);
    let r = check(&prefix).unwrap();
    assert_eq!((r.dtype, r.sequences, r.documents, r.tokens, r.bin_bytes), (DType::U16, 6, 3, 11, 22));
    assert_eq!((r.min_token, r.max_token, r.empty_sequences, r.longest_sequence), (Some(1), Some(11), 1, 4));
    assert_eq!(r.idx_bytes, (HEADER_LEN + 12 * 6 + 8 * 4) as u64);
    // A big shard crosses several parallel chunks; the minimum and maximum are found anywhere.
    let big = dir.path().join("big");
    let mut out = AtomicOutputs::new();
    let mut w = IndexedDatasetWriter::create(&big, DType::I32, &mut out).unwrap();
    let seq: Vec<u32> = (0..1000).map(|i| 1000 + i).collect();
    for _ in 0..3000 {
        w.add_sequence(&seq).unwrap();
    }
    w.add_sequence(&[7, 99999]).unwrap();
    w.end_document();
    w.finish(&mut out).unwrap();
    out.commit().unwrap();
    let r = check(&big).unwrap();
    assert_eq!((r.min_token, r.max_token, r.tokens), (Some(7), Some(99999), 3_000_002));
}
