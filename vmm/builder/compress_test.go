package builder

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"flag"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// sizeAppend appends the little-endian size Linux's size_append puts after
// a compressed kernel (scripts/Makefile.lib).
func sizeAppend(stream []byte, size int) []byte {
	return binary.LittleEndian.AppendUint32(bytes.Clone(stream), uint32(size))
}

// bzImage wraps payload in a minimal bzImage: boot protocol version, three
// setup sectors, the payload 0x40 bytes into the protected-mode part.
func bzImage(payload []byte, version uint16) []byte {
	const setupSects, payloadOff = 3, 0x40
	b := make([]byte, (setupSects+1)*512+payloadOff, (setupSects+1)*512+payloadOff+len(payload))
	b[bzSetupSects] = setupSects
	binary.LittleEndian.PutUint16(b[0x1fe:], 0xaa55)
	copy(b[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[bzVersion:], version)
	binary.LittleEndian.PutUint32(b[bzPayloadOffset:], payloadOff)
	binary.LittleEndian.PutUint32(b[bzPayloadLength:], uint32(len(payload)))
	return append(b, payload...)
}

// must returns v, panicking on err: for test set-up that cannot fail.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func gzipBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	must(w.Write(b))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Linux-style payloads (stream, then size_append, except gzip), made with
// the decoders' own libraries.
func gzipPayload(t testing.TB, b []byte) []byte { return gzipBytes(t, b) }

func xzPayload(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := must(xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}.NewWriter(&buf))
	must(w.Write(b))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return sizeAppend(buf.Bytes(), len(b))
}

func lzmaPayload(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := must(lzma.WriterConfig{DictCap: 1 << 20}.NewWriter(&buf))
	must(w.Write(b))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return sizeAppend(buf.Bytes(), len(b))
}

func zstdPayload(t testing.TB, b []byte) []byte {
	e := must(zstd.NewWriter(nil))
	defer e.Close()
	return sizeAppend(e.EncodeAll(b, nil), len(b))
}

func lz4Payload(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := lz4.NewWriter(&buf)
	if err := w.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	must(w.Write(b))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return sizeAppend(buf.Bytes(), len(b))
}

var updateTestdata = flag.Bool("update-testdata", false, "regenerate testdata/ with the Linux compressors (bzip2, xz, lzma, lz4, zstd)")

// testdataFiles are payloads made by the command-line tools Linux's
// kernel build uses (scripts/Makefile.lib, scripts/xz_wrap.sh), from
// xtfLike().bytes(); bzip2 has no Go encoder, and the others check our
// decoders against the real tools' output.
var testdataFiles = []struct {
	name  string
	cmd   []string
	codec string
	err   string // what decoding says, when it fails
}{
	{"xtf-like.elf.bz2", []string{"bzip2", "-9"}, "bzip2", ""},
	{"xtf-like.elf.xz", []string{"xz", "--check=crc32", "--lzma2=dict=1MiB"}, "xz", ""},
	{"xtf-like.elf.x86.xz", []string{"xz", "--check=crc32", "--x86", "--lzma2=dict=1MiB"}, "xz", ""}, // Linux's xz_wrap.sh on x86
	{"xtf-like.elf.lzma", []string{"lzma", "-9"}, "lzma", ""},
	{"xtf-like.elf.lz4", []string{"lz4", "-l", "-9"}, "lz4", ""},
	{"xtf-like.elf.zst", []string{"zstd", "-19"}, "zstd", ""},
}

// bombFiles are 64 MiB of zeros compressed by the LZMA tools, whose Go
// encoder is too slow to make them in every test run; their size fields
// lie (4 KiB).
var bombFiles = []struct {
	name string
	cmd  []string
}{
	{"bomb-64m.xz", []string{"xz", "--check=crc32", "--lzma2=dict=1MiB"}},
	{"bomb-64m.lzma", []string{"lzma", "--lzma1=dict=1MiB"}},
}

// TestTestdata regenerates testdata/ under -update-testdata; otherwise it
// checks that every file there, wrapped in a bzImage, parses (or fails as
// expected).
func TestTestdata(t *testing.T) {
	elfImg := xtfLike().bytes()
	if *updateTestdata {
		for _, f := range bombFiles {
			cmd := exec.Command(f.cmd[0], f.cmd[1:]...)
			cmd.Stdin = bytes.NewReader(make([]byte, 64<<20))
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v", f.cmd, err)
			}
			if err := os.WriteFile(filepath.Join("testdata", f.name), sizeAppend(out, 4096), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range testdataFiles {
		path := filepath.Join("testdata", f.name)
		if *updateTestdata {
			cmd := exec.Command(f.cmd[0], f.cmd[1:]...)
			cmd.Stdin = bytes.NewReader(elfImg)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v", f.cmd, err)
			}
			if err := os.WriteFile(path, sizeAppend(out, len(elfImg)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(f.name, func(t *testing.T) {
			p, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			k, err := Parse(bzImage(p, 0x20f))
			if f.err != "" {
				if err == nil || !strings.Contains(err.Error(), f.err) {
					t.Fatalf("got %v, want %q", err, f.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := "bzImage (" + f.codec + "): ELF"; k.Format != want {
				t.Errorf("format %q, want %q", k.Format, want)
			}
			checkXTF(t, k, 0x106000)
		})
	}
}

// Every codec xc_dom_bzimageloader knows, as a bzImage payload and (gzip)
// as a whole compressed file.
func TestParseCompressed(t *testing.T) {
	elfImg := xtfLike().bytes()
	bz2 := must(os.ReadFile(filepath.Join("testdata", "xtf-like.elf.bz2")))
	for _, c := range []struct {
		name, format string
		image        []byte
	}{
		{"plain ELF", "ELF", elfImg},
		{"gzip ELF", "gzip: ELF", gzipBytes(t, elfImg)},
		{"bzImage gzip", "bzImage (gzip): ELF", bzImage(gzipPayload(t, elfImg), 0x208)},
		{"bzImage bzip2", "bzImage (bzip2): ELF", bzImage(bz2, 0x20f)},
		{"bzImage xz", "bzImage (xz): ELF", bzImage(xzPayload(t, elfImg), 0x20f)},
		{"bzImage lzma", "bzImage (lzma): ELF", bzImage(lzmaPayload(t, elfImg), 0x20f)},
		{"bzImage lz4", "bzImage (lz4): ELF", bzImage(lz4Payload(t, elfImg), 0x20f)},
		{"bzImage zstd", "bzImage (zstd): ELF", bzImage(zstdPayload(t, elfImg), 0x20f)},
		{"gzip bzImage zstd", "gzip: bzImage (zstd): ELF", gzipBytes(t, bzImage(zstdPayload(t, elfImg), 0x20f))},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := Parse(c.image)
			if err != nil {
				t.Fatal(err)
			}
			if k.Format != c.format {
				t.Errorf("format %q, want %q", k.Format, c.format)
			}
			checkXTF(t, k, 0x106000)
		})
	}
}

// Broken wrappers and payloads: one error line each, naming the rule.
func TestParseCompressedBad(t *testing.T) {
	elfImg := xtfLike().bytes()
	bz2 := must(os.ReadFile(filepath.Join("testdata", "xtf-like.elf.bz2")))
	payloads := map[string][]byte{
		"gzip": gzipPayload(t, elfImg), "bzip2": bz2, "xz": xzPayload(t, elfImg),
		"lzma": lzmaPayload(t, elfImg), "lz4": lz4Payload(t, elfImg), "zstd": zstdPayload(t, elfImg),
	}
	type tc struct {
		name  string
		image []byte
		want  string
	}
	cases := []tc{
		{"old boot protocol", bzImage(payloads["gzip"], 0x207), "bzImage boot protocol 2.07 is too old"},
		{"payload past the end", func() []byte { b := bzImage(payloads["gzip"], 0x20f); return b[:len(b)-1] }(), "runs past the"},
		{"payload offset past the end", func() []byte {
			b := bzImage(payloads["gzip"], 0x20f)
			binary.LittleEndian.PutUint32(b[bzPayloadOffset:], 1<<30)
			return b
		}(), "bzImage payload offset 0x40000800 is past"},
		{"unknown compression", bzImage([]byte("PK\x03\x04 not a kernel at all"), 0x20f), "unknown compression format"},
		{"lzop", bzImage(append([]byte("\x89LZO\x00\r\n\x1a\n"), make([]byte, 64)...), 0x20f), "lzop-compressed, which xenresume does not decompress"},
		{"payload not ELF", bzImage(zstdPayload(t, []byte("just some text, not an ELF image")), 0x20f), "not an ELF image"},
		{"gzip of text", gzipBytes(t, []byte("hello")), "decompresses to neither an ELF file nor a bzImage"},
		{"truncated gzip file", gzipBytes(t, elfImg)[:100], "gzip-compressed kernel"},
		{"too short", bzImage([]byte{0x5d, 0}, 0x20f), "too short"},
	}
	for codec, p := range payloads {
		// A stream cut in half, keeping its size field.
		if codec != "gzip" {
			half := append(bytes.Clone(p[:len(p)/2]), p[len(p)-4:]...)
			cases = append(cases, tc{"truncated " + codec, bzImage(half, 0x20f), "bzImage payload (" + codec + ")"})
		}
		// Corrupt bytes in the middle of the stream.
		bad := bytes.Clone(p)
		for i := len(bad) / 3; i < len(bad)/3+8 && i < len(bad)-4; i++ {
			bad[i] ^= 0x55
		}
		cases = append(cases, tc{"corrupt " + codec, bzImage(bad, 0x20f), "bzImage payload (" + codec + ")"})
		// A size field one byte short of the stream's output.
		if codec != "gzip" {
			short := bytes.Clone(p)
			binary.LittleEndian.PutUint32(short[len(short)-4:], uint32(len(elfImg)-1))
			cases = append(cases, tc{"size field short " + codec, bzImage(short, 0x20f), "more than the"})
			long := bytes.Clone(p)
			binary.LittleEndian.PutUint32(long[len(long)-4:], uint32(len(elfImg)+1))
			cases = append(cases, tc{"size field long " + codec, bzImage(long, 0x20f), "instead of"})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.image)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

// Decompression bombs are refused without decompressing them, or while
// decompressing them, never by exhausting memory.
func TestParseDecompressionBomb(t *testing.T) {
	zeros := make([]byte, 8<<20)
	cases := []struct {
		name  string
		image []byte
		limit uint64
		want  string
	}{
		{"size field over the limit", bzImage(zstdPayload(t, zeros), 0x20f), 1 << 20, "8388608 bytes, more than the 1048576-byte limit"},
		{"gzip size over the limit", gzipBytes(t, zeros), 1 << 20, "gives 8388608 bytes, more than the 1048576-byte limit"},
		{"bzImage gzip over the limit", bzImage(gzipBytes(t, zeros), 0x20f), 1 << 20, "more than the 1048576-byte limit"},
	}
	// Payloads whose size field lies: each says 4 KiB, each holds 64 MiB
	// of zeros, under the default limit. The decoders' working memory
	// (window, dictionary, block buffers) is what refusing them costs, not
	// the bomb's size.
	big := make([]byte, 64<<20)
	for codec, p := range map[string][]byte{
		"zstd": zstdPayload(t, big), "lz4": lz4Payload(t, big),
		"xz":   must(os.ReadFile(filepath.Join("testdata", "bomb-64m.xz"))),
		"lzma": must(os.ReadFile(filepath.Join("testdata", "bomb-64m.lzma"))),
	} {
		binary.LittleEndian.PutUint32(p[len(p)-4:], 4096)
		cases = append(cases, struct {
			name  string
			image []byte
			limit uint64
			want  string
		}{"lying size field " + codec, bzImage(p, 0x20f), 0, "decompresses to more than the 4096 bytes"})
	}
	lying := gzipBytes(t, zeros)
	binary.LittleEndian.PutUint32(lying[len(lying)-4:], 4096)
	cases = append(cases, struct {
		name  string
		image []byte
		limit uint64
		want  string
	}{"lying gzip size", lying, 0, "decompresses to more than the 4096 bytes"})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := ParseWith(c.image, Options{Offer: DefaultOffer, MaxDecompressed: c.limit})
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			// Half the bomb: the decoders' buffers (lz4's reach 25 MiB
			// under -race), never its 64 MiB.
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 32<<20 {
				t.Errorf("allocated %d bytes refusing it", grew)
			}
		})
	}
}

// An xz or lzma header asking for a dictionary over Xen's 256 MiB LZMA
// memory limit is refused before the decoder allocates it.
func TestParseHugeDictionary(t *testing.T) {
	elfImg := xtfLike().bytes()
	x := xzPayload(t, elfImg)
	// The first block header follows the 12-byte stream header: size byte,
	// flags, then (no sizes) the LZMA2 filter: id 0x21, props size 1, the
	// dictionary code; then padding and the header's CRC32.
	h := x[12:]
	hlen := (int(h[0]) + 1) * 4
	if h[1]&0xc0 != 0 || h[2] != 0x21 || h[3] != 1 {
		t.Fatalf("unexpected xz block header % x", h[:hlen])
	}
	h[4] = 39 // 3 GiB
	binary.LittleEndian.PutUint32(h[hlen-4:], crc32.ChecksumIEEE(h[:hlen-4]))
	l := lzmaPayload(t, elfImg)
	binary.LittleEndian.PutUint32(l[1:], 1<<30)
	for _, c := range []struct {
		name  string
		image []byte
		want  string
	}{
		{"xz", bzImage(x, 0x20f), "dictionary size exceeds max"},
		{"lzma", bzImage(l, 0x20f), "bzImage payload (lzma)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Parse(c.image)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
				t.Errorf("allocated %d bytes refusing it", grew)
			}
		})
	}
}
