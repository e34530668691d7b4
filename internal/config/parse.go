package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	yamlparser "github.com/goccy/go-yaml/parser"
)

// Error is one problem in a config file. Line is 0 when the problem is not
// tied to a line (for example an empty file).
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// maxReported bounds the number of problems in one error, so that a badly
// broken file with a thousand nodes does not flood the terminal.
const maxReported = 20

// Load reads and validates the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse parses and validates a pgmesh.yaml document. path is used in error
// messages and stored in Config.Path. Every problem found is reported, each as
// an *Error ("file:line: message"), sorted by line and joined with errors.Join.
func Parse(data []byte, path string) (*Config, error) {
	name := path
	if name == "" {
		name = "pgmesh.yaml"
	}
	p := &parser{file: name}
	cfg := p.config(data)
	if err := p.err(); err != nil {
		return nil, err
	}
	cfg.Path = path
	return cfg, nil
}

// parser collects problems while it walks the YAML syntax tree; walking the
// tree (rather than decoding into structs) gives every message a line number
// and lets one run report every problem.
type parser struct {
	file string
	errs []*Error
}

func (p *parser) errorf(line int, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(p.errs, func(a, b *Error) int { return a.Line - b.Line })
	var errs []error
	for i, e := range p.errs {
		if i == maxReported {
			errs = append(errs, fmt.Errorf("%s: and %d more problems", p.file, len(p.errs)-maxReported))
			break
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// entry is one key: value pair of a mapping.
type entry struct {
	key  string
	line int // line of the key
	val  ast.Node
}

func lineOf(n ast.Node, fallback int) int {
	if n == nil {
		return fallback
	}
	if tk := n.GetToken(); tk != nil && tk.Position != nil && tk.Position.Line > 0 {
		return tk.Position.Line
	}
	return fallback
}

// syntaxTree parses data, turning library errors (and, defensively, library
// panics on malformed input) into a file:line error.
func (p *parser) syntaxTree(data []byte) (body ast.Node, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			p.errorf(0, "invalid YAML")
			body, ok = nil, false
		}
	}()
	// Duplicate keys are reported by entries, with both lines.
	f, err := yamlparser.ParseBytes(data, 0, yamlparser.AllowDuplicateMapKey())
	if err != nil {
		var ye yaml.Error
		if errors.As(err, &ye) {
			line := 0
			if tk := ye.GetToken(); tk != nil && tk.Position != nil {
				line = tk.Position.Line
			}
			// Only the message: the library's source excerpt could show a
			// DSN with its password.
			p.errorf(line, "invalid YAML: %s", redact(ye.GetMessage()))
		} else {
			p.errorf(0, "invalid YAML: %s", redact(err.Error()))
		}
		return nil, false
	}
	var docs []*ast.DocumentNode
	for _, d := range f.Docs {
		if d != nil && d.Body != nil {
			docs = append(docs, d)
		}
	}
	if len(docs) == 0 {
		p.errorf(0, "empty config: it needs at least cluster: and nodes:")
		return nil, false
	}
	if len(docs) > 1 {
		p.errorf(lineOf(docs[1].Body, 0), "more than one YAML document; pgmesh.yaml holds one cluster")
		return nil, false
	}
	return docs[0].Body, true
}

var passwordRE = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|\S+)|(://[^:/@\s]*:)[^@\s]*@`)

// redact hides passwords (key/value password=… and URL user:password@) in s.
func redact(s string) string {
	return passwordRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := passwordRE.FindStringSubmatch(m)
		if sub[1] != "" {
			return sub[1] + "***"
		}
		return sub[3] + "***@"
	})
}

// plain returns n, or reports anchors, aliases and tags, which pgmesh.yaml
// does not use (they would make line numbers in messages point elsewhere).
func (p *parser) plain(n ast.Node, line int) (ast.Node, bool) {
	switch n.(type) {
	case *ast.AnchorNode, *ast.AliasNode, *ast.TagNode, *ast.MergeKeyNode:
		p.errorf(lineOf(n, line), "anchors, aliases, merge keys and tags are not supported")
		return nil, false
	}
	return n, true
}

func isNull(n ast.Node) bool {
	_, null := n.(*ast.NullNode)
	return n == nil || null
}

// entries returns the pairs of mapping n (what names it in messages);
// null means an empty mapping. Duplicate keys are reported.
func (p *parser) entries(n ast.Node, what string, line int) []entry {
	n, ok := p.plain(n, line)
	if !ok || isNull(n) {
		return nil
	}
	var values []*ast.MappingValueNode
	switch m := n.(type) {
	case *ast.MappingNode:
		values = m.Values
	case *ast.MappingValueNode:
		values = []*ast.MappingValueNode{m}
	default:
		p.errorf(lineOf(n, line), "%s: want a mapping (key: value), got %s", what, kind(n))
		return nil
	}
	seen := map[string]int{}
	var out []entry
	for _, mv := range values {
		if mv == nil {
			continue
		}
		kl := lineOf(mv.Key, lineOf(mv, line))
		key, ok := p.plain(mv.Key, kl)
		if !ok {
			continue
		}
		k, isStr := scalarText(key)
		if !isStr {
			p.errorf(kl, "%s: want a plain key, got %s", what, kind(key))
			continue
		}
		if first, dup := seen[k]; dup {
			p.errorf(kl, "%s: duplicate key %q (first at line %d)", what, k, first)
			continue
		}
		seen[k] = kl
		out = append(out, entry{key: k, line: kl, val: mv.Value})
	}
	return out
}

func (p *parser) unknown(e entry, where string, known ...string) {
	if where != "" {
		where += ": "
	}
	p.errorf(e.line, "%sunknown key %q (known: %s)", where, e.key, strings.Join(known, ", "))
}

// scalarText returns the text of a scalar: the value of strings, the source
// text of numbers and booleans (so that `schemas: [2024]` means "2024").
func scalarText(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.LiteralNode:
		if v.Value == nil {
			return "", true
		}
		return v.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		if tk := n.GetToken(); tk != nil {
			return tk.Value, true
		}
	}
	return "", false
}

func kind(n ast.Node) string {
	switch n.(type) {
	case nil, *ast.NullNode:
		return "nothing"
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.IntegerNode:
		return "an integer"
	case *ast.BoolNode:
		return "a boolean"
	case *ast.StringNode, *ast.LiteralNode:
		return "a string"
	}
	return "a " + strings.ToLower(n.Type().String())
}

// str returns the string value of e; null is "".
func (p *parser) str(e entry, what string) (string, bool) {
	n, ok := p.plain(e.val, e.line)
	if !ok {
		return "", false
	}
	if isNull(n) {
		return "", true
	}
	s, ok := scalarText(n)
	if !ok {
		p.errorf(lineOf(n, e.line), "%s: want a string, got %s", what, kind(n))
	}
	return s, ok
}

func (p *parser) integer(e entry, what string) (int, bool) {
	n, ok := p.plain(e.val, e.line)
	if !ok {
		return 0, false
	}
	if v, isInt := n.(*ast.IntegerNode); isInt {
		switch x := v.Value.(type) {
		case int64:
			if x >= -1<<31 && x < 1<<31 {
				return int(x), true
			}
		case uint64:
			if x < 1<<31 {
				return int(x), true
			}
		}
		p.errorf(lineOf(n, e.line), "%s: %s is out of range", what, v.Token.Value)
		return 0, false
	}
	p.errorf(lineOf(n, e.line), "%s: want an integer, got %s", what, kind(n))
	return 0, false
}

func (p *parser) boolean(e entry, what string) (bool, bool) {
	n, ok := p.plain(e.val, e.line)
	if !ok {
		return false, false
	}
	if v, isBool := n.(*ast.BoolNode); isBool {
		return v.Value, true
	}
	p.errorf(lineOf(n, e.line), "%s: want true or false, got %s", what, kind(n))
	return false, false
}

// item is one string of a list, with its line.
type item struct {
	val  string
	line int
}

// strList returns the strings of list e; null is an empty list.
func (p *parser) strList(e entry, what string) ([]item, bool) {
	n, ok := p.plain(e.val, e.line)
	if !ok {
		return nil, false
	}
	if isNull(n) {
		return nil, true
	}
	seq, isSeq := n.(*ast.SequenceNode)
	if !isSeq {
		p.errorf(lineOf(n, e.line), "%s: want a list, got %s", what, kind(n))
		return nil, false
	}
	var out []item
	ok = true
	for _, v := range seq.Values {
		l := lineOf(v, e.line)
		v, plainOK := p.plain(v, l)
		if !plainOK {
			ok = false
			continue
		}
		s, isStr := scalarText(v)
		if !isStr || s == "" {
			p.errorf(l, "%s: want non-empty strings, got %s", what, kind(v))
			ok = false
			continue
		}
		out = append(out, item{s, l})
	}
	return out, ok
}
