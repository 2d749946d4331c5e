// Package xlcfg reads xl's domain configuration files (xl.cfg(5)), so that
// `runvm create` takes the files `xl create` takes.
//
// The syntax is libxlutil's (Xen's tools/libs/util/libxlu_cfg_l.l, the
// lexer, and libxlu_cfg_y.y, the grammar):
//
//   - A file is a sequence of statements, each ended by a newline or `;`.
//     Empty statements are allowed.
//   - A statement is `key = value`, or `key += value`, which appends a
//     string to the key's previous string or a list to its previous list.
//     The last assignment to a key is the one that counts.
//   - A key is a lowercase letter followed by lowercase letters, digits and
//     underscores.
//   - A value is a string, "..." or '...', on one line, with the escapes
//     \" \' \\ \a \b \f \n \r \t \v; a number, a digit followed by digits,
//     x and the letters a to f, kept as written (128, 0x80); or a list
//     [ value, ... ], which may span lines, nest, be empty and end with a
//     comma.
//   - `#` starts a comment that runs to the end of the line.
//
// xl treats a number and a string alike ("128" is a valid memory size), and
// so does Decode. Where xlcfg departs from libxlutil it is to be clearer, never
// to accept a file differently: a carriage return is whitespace (files
// with CRLF line ends), the last statement or comment may end the file
// without a newline, numeric escapes (\x41, \101) are refused (libxlutil
// drops them or refuses them), and parsing stops at the first error,
// which names the file and line.
package xlcfg

import (
	"bytes"
	"fmt"
	"strings"
)

// CommandLine is the Source of settings made by `KEY=VALUE` arguments
// (File.Override); their Line is the argument's position, from 1.
const CommandLine = "command line"

// maxDepth bounds list nesting (xl's own files nest two deep).
const maxDepth = 64

// Kind is what a value is.
type Kind int

// The kinds of values.
const (
	String Kind = iota // a quoted string
	Number             // a bare number, kept as written
	List               // a list of values
)

// Value is a setting's value.
type Value struct {
	Kind Kind
	Text string  // a String's contents (unescaped) or a Number as written
	List []Value // a List's items
	Line int     // where the value starts
}

// String renders v in xl's syntax: Parse reads it back as v.
func (v Value) String() string {
	switch v.Kind {
	case Number:
		return v.Text
	case List:
		items := make([]string, len(v.List))
		for i, item := range v.List {
			items[i] = item.String()
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v.Text); i++ {
		switch c := v.Text[i]; c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Setting is one assignment.
type Setting struct {
	Key   string
	Value Value // for +=, the value with the earlier one prepended
	// Append says the assignment was +=: xl refuses such a value where it
	// wants a number.
	Append bool
	Source string // the file's name, or CommandLine
	Line   int
}

// Error is a syntax error, or a value Decode cannot use, where it is.
type Error struct {
	Source string
	Line   int
	Msg    string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.Source, e.Line, e.Msg) }

// File is a parsed configuration: its assignments in order.
type File struct {
	Settings []Setting
}

// Parse parses a configuration file's contents; source names it in errors.
func Parse(source string, data []byte) (*File, error) {
	f := &File{}
	if err := f.parse(source, 1, data); err != nil {
		return nil, err
	}
	return f, nil
}

// Override applies `KEY=VALUE` arguments after the file, as `xl create
// FILE KEY=VALUE ...` does: each is a statement in the file's syntax (so a
// string is quoted: 'name="guest"'), read as if it ended the file.
func (f *File) Override(args []string) error {
	for i, arg := range args {
		if err := f.parse(CommandLine, i+1, []byte(arg)); err != nil {
			return err
		}
	}
	return nil
}

// Lookup returns the assignment that counts for key: the last.
func (f *File) Lookup(key string) (Setting, bool) {
	for i := len(f.Settings) - 1; i >= 0; i-- {
		if f.Settings[i].Key == key {
			return f.Settings[i], true
		}
	}
	return Setting{}, false
}

func (f *File) parse(source string, line int, data []byte) error {
	p := &parser{lex: lexer{src: data, line: line, source: source}, f: f}
	return p.file()
}

type tokenKind int

const (
	tEOF tokenKind = iota
	tNewline
	tSemi
	tIdent
	tNumber
	tString
	tAssign
	tAppend
	tLBrack
	tRBrack
	tComma
)

type token struct {
	kind tokenKind
	text string
	line int
}

// describe names a token in an error message.
func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of file"
	case tNewline:
		return "end of line"
	case tString:
		return fmt.Sprintf("string %q", t.text)
	}
	return "`" + t.text + "'"
}

type lexer struct {
	src    []byte
	pos    int
	line   int
	source string
}

func (l *lexer) errorf(format string, args ...any) error {
	return &Error{Source: l.source, Line: l.line, Msg: fmt.Sprintf(format, args...)}
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// next returns the next token.
func (l *lexer) next() (token, error) {
	for l.pos < len(l.src) {
		switch l.src[l.pos] {
		case ' ', '\t', '\r':
			l.pos++
			continue
		case '#':
			for l.pos < len(l.src) && l.src[l.pos] != '\n' {
				l.pos++
			}
			continue
		}
		break
	}
	if l.pos >= len(l.src) {
		return token{kind: tEOF, line: l.line}, nil
	}
	start, c := l.pos, l.src[l.pos]
	tok := func(k tokenKind, n int) (token, error) {
		l.pos += n
		return token{kind: k, text: string(l.src[start:l.pos]), line: l.line}, nil
	}
	switch {
	case c == '\n':
		t, _ := tok(tNewline, 1)
		l.line++
		return t, nil
	case c == ';':
		return tok(tSemi, 1)
	case c == '=':
		return tok(tAssign, 1)
	case c == '+' && l.pos+1 < len(l.src) && l.src[l.pos+1] == '=':
		return tok(tAppend, 2)
	case c == '[':
		return tok(tLBrack, 1)
	case c == ']':
		return tok(tRBrack, 1)
	case c == ',':
		return tok(tComma, 1)
	case isLower(c):
		n := 1
		for start+n < len(l.src) && (isLower(l.src[start+n]) || isDigit(l.src[start+n]) || l.src[start+n] == '_') {
			n++
		}
		return tok(tIdent, n)
	case isDigit(c):
		n := 1
		for start+n < len(l.src) {
			d := l.src[start+n]
			if !isDigit(d) && !(d >= 'a' && d <= 'f') && d != 'x' {
				break
			}
			n++
		}
		return tok(tNumber, n)
	case c == '"' || c == '\'':
		return l.str(c)
	case c >= 'A' && c <= 'Z':
		return token{}, l.errorf("unexpected %q: keys are lowercase, and strings are quoted", c)
	case strings.IndexByte("+-.():", c) >= 0:
		return token{}, l.errorf("unexpected %q: an xl configuration is not Python (strings are quoted, numbers are plain)", c)
	}
	return token{}, l.errorf("unexpected %q", c)
}

// str reads a quoted string, unescaping it.
func (l *lexer) str(quote byte) (token, error) {
	line := l.line
	l.pos++ // the opening quote
	var b strings.Builder
	for {
		if l.pos >= len(l.src) || l.src[l.pos] == '\n' {
			return token{}, l.errorf("unterminated string: a string ends on its own line with %c", quote)
		}
		c := l.src[l.pos]
		l.pos++
		if c == quote {
			return token{kind: tString, text: b.String(), line: line}, nil
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if l.pos >= len(l.src) || l.src[l.pos] == '\n' {
			return token{}, l.errorf("unterminated string: a backslash ends the line")
		}
		e := l.src[l.pos]
		l.pos++
		switch e {
		case '"', '\'', '\\':
			b.WriteByte(e)
		case 'a':
			b.WriteByte('\a')
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'v':
			b.WriteByte('\v')
		case 'x', '0', '1', '2', '3', '4', '5', '6', '7':
			return token{}, l.errorf("numeric escape \\%c in a string: xl does not read these, write the character itself", e)
		default:
			return token{}, l.errorf("invalid escape \\%c in a string (valid: \\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v)", e)
		}
	}
}

type parser struct {
	lex    lexer
	f      *File
	peeked *token
}

func (p *parser) next() (token, error) {
	if p.peeked != nil {
		t := *p.peeked
		p.peeked = nil
		return t, nil
	}
	return p.lex.next()
}

func (p *parser) peek() (token, error) {
	if p.peeked == nil {
		t, err := p.lex.next()
		if err != nil {
			return t, err
		}
		p.peeked = &t
	}
	return *p.peeked, nil
}

func (p *parser) errorf(t token, format string, args ...any) error {
	return &Error{Source: p.lex.source, Line: t.line, Msg: fmt.Sprintf(format, args...)}
}

// file reads statements to the end.
func (p *parser) file() error {
	for {
		t, err := p.next()
		if err != nil {
			return err
		}
		switch t.kind {
		case tEOF:
			return nil
		case tNewline, tSemi:
			continue
		case tIdent:
		default:
			return p.errorf(t, "expected a key, got %s", t.describe())
		}
		op, err := p.next()
		if err != nil {
			return err
		}
		if op.kind != tAssign && op.kind != tAppend {
			return p.errorf(op, "expected = or += after %s, got %s", t.text, op.describe())
		}
		v, err := p.value(0)
		if err != nil {
			return err
		}
		end, err := p.next()
		if err != nil {
			return err
		}
		if end.kind != tNewline && end.kind != tSemi && end.kind != tEOF {
			return p.errorf(end, "expected the end of the statement after %s's value, got %s (a list is [ a, b ])", t.text, end.describe())
		}
		if err := p.set(t, op.kind == tAppend, v); err != nil {
			return err
		}
		if end.kind == tEOF {
			return nil
		}
	}
}

// set records an assignment, merging += with the key's earlier value.
func (p *parser) set(key token, appendOp bool, v Value) error {
	if prev, ok := p.f.Lookup(key.text); ok && appendOp {
		if (prev.Value.Kind == List) != (v.Kind == List) {
			return p.errorf(key, "%s += : cannot add a list to a string or a string to a list", key.text)
		}
		if v.Kind == List {
			v.List = append(append([]Value(nil), prev.Value.List...), v.List...)
		} else {
			v.Text = prev.Value.Text + v.Text
			v.Kind = String
		}
	}
	p.f.Settings = append(p.f.Settings, Setting{Key: key.text, Value: v, Append: appendOp, Source: p.lex.source, Line: key.line})
	return nil
}

// skipNewlines skips the newlines a list may contain.
func (p *parser) skipNewlines() error {
	for {
		t, err := p.peek()
		if err != nil || t.kind != tNewline {
			return err
		}
		p.next()
	}
}

// value reads a string, a number or a list.
func (p *parser) value(depth int) (Value, error) {
	t, err := p.next()
	if err != nil {
		return Value{}, err
	}
	switch t.kind {
	case tString:
		return Value{Kind: String, Text: t.text, Line: t.line}, nil
	case tNumber:
		return Value{Kind: Number, Text: t.text, Line: t.line}, nil
	case tLBrack:
	case tIdent:
		rest := p.lex.src[p.lex.pos:]
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[:i]
		}
		if p.peeked == nil && bytes.ContainsAny(rest, "().:") {
			return Value{}, p.errorf(t, "expected a value, got %s: an xl configuration is not Python (strings are quoted, numbers are plain)", t.describe())
		}
		return Value{}, p.errorf(t, "expected a value, got %s: strings are quoted (\"%s\")", t.describe(), t.text)
	default:
		return Value{}, p.errorf(t, "expected a value (a \"string\", a number or a [list]), got %s", t.describe())
	}
	if depth >= maxDepth {
		return Value{}, p.errorf(t, "lists nested more than %d deep", maxDepth)
	}
	list := Value{Kind: List, Line: t.line, List: []Value{}}
	if err := p.skipNewlines(); err != nil {
		return Value{}, err
	}
	if end, err := p.peek(); err != nil {
		return Value{}, err
	} else if end.kind == tRBrack {
		p.next()
		return list, nil
	}
	for {
		item, err := p.value(depth + 1)
		if err != nil {
			return Value{}, err
		}
		list.List = append(list.List, item)
		if err := p.skipNewlines(); err != nil {
			return Value{}, err
		}
		sep, err := p.next()
		if err != nil {
			return Value{}, err
		}
		switch sep.kind {
		case tRBrack:
			return list, nil
		case tComma:
		default:
			return Value{}, p.errorf(sep, "expected , or ] in the list opened on line %d, got %s", list.Line, sep.describe())
		}
		if err := p.skipNewlines(); err != nil {
			return Value{}, err
		}
		if end, err := p.peek(); err != nil {
			return Value{}, err
		} else if end.kind == tRBrack { // a trailing comma
			p.next()
			return list, nil
		}
	}
}
