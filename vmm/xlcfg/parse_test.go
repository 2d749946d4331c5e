package xlcfg

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// str and num build expected values without lines.
func str(s string) Value    { return Value{Kind: String, Text: s} }
func num(s string) Value    { return Value{Kind: Number, Text: s} }
func list(v ...Value) Value { return Value{Kind: List, List: append([]Value{}, v...)} }

// stripLines zeroes the lines so values compare by content.
func stripLines(v Value) Value {
	v.Line = 0
	for i := range v.List {
		v.List[i] = stripLines(v.List[i])
	}
	return v
}

// values maps each key to the value that counts.
func values(f *File) map[string]Value {
	m := map[string]Value{}
	for _, s := range f.Settings {
		v, _ := f.Lookup(s.Key)
		m[s.Key] = stripLines(v.Value)
	}
	return m
}

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     map[string]Value
	}{
		{"empty", "", map[string]Value{}},
		{"comments and blank lines", "# a comment\n\n   # another\n", map[string]Value{}},
		{"string", `name = "guest"`, map[string]Value{"name": str("guest")}},
		{"single quotes", `name='guest'`, map[string]Value{"name": str("guest")}},
		{"number", "memory = 128\n", map[string]Value{"memory": num("128")}},
		{"hex number kept as written", "memory=0x80\n", map[string]Value{"memory": num("0x80")}},
		{"semicolons", `name="a"; memory=64;vcpus=1`, map[string]Value{"name": str("a"), "memory": num("64"), "vcpus": num("1")}},
		{"comment after a value", "memory = 64 # MiB\n", map[string]Value{"memory": num("64")}},
		{"comment at the end without newline", "memory = 64\n# end", map[string]Value{"memory": num("64")}},
		{"hash inside a string", `cmdline = "a#b"`, map[string]Value{"cmdline": str("a#b")}},
		{"escapes", `extra = "q\"s\'b\\n\nt\tv\v"`, map[string]Value{"extra": str("q\"s'b\\n\nt\tv\v")}},
		{"other quote inside", `extra = 'say "hi"'`, map[string]Value{"extra": str(`say "hi"`)}},
		{"CRLF", "name = \"a\"\r\nmemory = 8\r\n", map[string]Value{"name": str("a"), "memory": num("8")}},
		{"later wins", "memory = 64\nmemory = 128\n", map[string]Value{"memory": num("128")}},
		{"empty list", "disk = []\n", map[string]Value{"disk": list()}},
		{"list", `vif = [ "bridge=br0", 'mac=00:16:3e:00:00:01' ]`, map[string]Value{"vif": list(str("bridge=br0"), str("mac=00:16:3e:00:00:01"))}},
		{"multi-line list, trailing comma", "disk = [\n  'a',\n  'b',\n]\n", map[string]Value{"disk": list(str("a"), str("b"))}},
		{"newlines around items", "disk = [\n\n 'a'\n\n ,\n 'b'\n\n]", map[string]Value{"disk": list(str("a"), str("b"))}},
		{"nested lists", `vnuma = [ [ "pnode=0", 1 ], [] ]`, map[string]Value{"vnuma": list(list(str("pnode=0"), num("1")), list())}},
		{"append string", "extra = 'a'\nextra += \" b\"\n", map[string]Value{"extra": str("a b")}},
		{"append list", "disk = ['a']\ndisk += ['b', 'c']\n", map[string]Value{"disk": list(str("a"), str("b"), str("c"))}},
		{"append with nothing before", "extra += 'a'", map[string]Value{"extra": str("a")}},
		{"keys with digits and underscores", "on_soft_reset = 'destroy'\nx86_64 = 1", map[string]Value{"on_soft_reset": str("destroy"), "x86_64": num("1")}},
		{"XTF's file", xtfExample, map[string]Value{
			"name": str("test-pv64-example"), "vcpus": num("1"), "type": str("pv"), "loader": str("generic"),
			"memory": num("128"), "kernel": str("/opt/xtf/tests/example/test-pv64-example"),
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := Parse("x.cfg", []byte(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if got := values(f); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %v\nwant %v", got, c.want)
			}
		})
	}
}

const xtfExample = `name="test-pv64-example"

vcpus=1 

type="pv"
loader="generic" # Legacy for before Xen 4.10

memory=128
kernel="/opt/xtf/tests/example/test-pv64-example"
`

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		name, in string
		line     int
		want     string
	}{
		{"missing value", "memory =\n", 1, "expected a value"},
		{"missing =", "memory 128\n", 1, "expected = or += after memory"},
		{"bare word value", "name = guest\n", 1, "strings are quoted (\"guest\")"},
		{"uppercase key", "\nName = 'x'\n", 2, "keys are lowercase"},
		{"python", "memory = 64\nkernel = os.path.join('a')\n", 2, "not Python"},
		{"python call", "x = f(1)", 1, "not Python"},
		{"unit suffix", "memory = 128M\n", 1, "keys are lowercase, and strings are quoted"},
		{"two values", "memory = 1 2\n", 1, "expected the end of the statement"},
		{"unterminated string", "name = \"abc\nmemory = 1\n", 1, "unterminated string"},
		{"string across lines", "name = 'a\nb'\n", 1, "unterminated string"},
		{"backslash at the end", `name = "a\`, 1, "backslash ends the line"},
		{"hex escape", `name = "\x41"`, 1, "numeric escape"},
		{"octal escape", `name = "\101"`, 1, "numeric escape"},
		{"bad escape", `name = "\q"`, 1, "invalid escape \\q"},
		{"unclosed list", "disk = [ 'a',\n 'b'\n", 3, "expected , or ] in the list opened on line 1"},
		{"missing comma", "disk = [ 'a' 'b' ]", 1, "expected , or ]"},
		{"leading comma", "disk = [ , 'a' ]", 1, "expected a value"},
		{"double comma", "disk = [ 'a',, 'b' ]", 1, "expected a value"},
		{"list += string", "disk = ['a']\ndisk += 'b'\n", 2, "cannot add a list to a string"},
		{"stray ]", "]\n", 1, "expected a key"},
		{"control character", "memory = 1\n\x01", 2, "unexpected"},
		{"deep nesting", "x = " + strings.Repeat("[", 100) + strings.Repeat("]", 100), 1, "nested more than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("x.cfg", []byte(c.in))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T), want an *Error", err, err)
			}
			if e.Line != c.line || e.Source != "x.cfg" || !strings.Contains(e.Msg, c.want) {
				t.Errorf("got %q, want line %d and %q", err, c.line, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is more than one line: %q", err)
			}
		})
	}
}

func TestOverride(t *testing.T) {
	f, err := Parse("x.cfg", []byte("name = 'a'\nextra = 'x'\ndisk = ['d']\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Override([]string{"memory=256", `name="b"`, "extra += ' y'", "disk += ['e']"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]Value{"name": str("b"), "extra": str("x y"), "disk": list(str("d"), str("e")), "memory": num("256")}
	if got := values(f); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	if s, _ := f.Lookup("memory"); s.Source != CommandLine || s.Line != 1 {
		t.Errorf("memory set at %s:%d, want %s:1", s.Source, s.Line, CommandLine)
	}
	err = f.Override([]string{"vcpus=1", "name=guest"})
	if err == nil || err.Error() != "command line:2: expected a value, got `guest': strings are quoted (\"guest\")" {
		t.Errorf("bare word on the command line: %v", err)
	}
}

// String renders a value that Parse reads back.
func TestValueString(t *testing.T) {
	v := list(str("a\"b\\c\nd\re'f\tg"), num("0x10"), list(), list(str("")))
	f, err := Parse("x", []byte("k = "+v.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := values(f)["k"]; !reflect.DeepEqual(got, v) {
		t.Errorf("round trip: got %v, want %v", got, v)
	}
}

// FuzzParse: no input panics the parser or Decode; an error is one line
// naming its place; what parses renders back to the same values.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		xtfExample,
		"disk = [\n  'phy:/dev/vg/guest,xvda,w',\n  'file:/tmp/x.img,xvdb,r',\n]\nvif = [ 'bridge=xenbr0' ]\n",
		"name='a'; memory=0x40; vcpus = '1'\non_crash = \"preserve\"\nextra += \" console=hvc0\"\n",
		"vnuma = [ [ \"pnode=0\", \"size=512\" ], [ ] ]\n",
		"cmdline = \"a\\\"b\\\\c\\n\"\nroot = '/dev/xvda1'\n",
		"kernel = os.path.join('/boot', 'vmlinuz')\n",
		"x = [[[[]]]]\r\n# tail",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.cfg", data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Line < 1 || strings.Contains(err.Error(), "\n") {
				t.Fatalf("bad error %q", err)
			}
			return
		}
		if _, err := Decode(file, "/cfg"); err != nil {
			var e *Error
			if !errors.As(err, &e) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("bad decode error %q", err)
			}
		}
		var b strings.Builder
		want := values(file)
		for k, v := range want {
			b.WriteString(k + " = " + v.String() + "\n")
		}
		again, err := Parse("again.cfg", []byte(b.String()))
		if err != nil {
			t.Fatalf("rendered file does not parse: %v\n%s", err, b.String())
		}
		if got := values(again); !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip changed values:\n got %v\nwant %v", got, want)
		}
	})
}
