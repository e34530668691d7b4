package config

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// AddNode returns data, a pgmesh.yaml, with an entry for one more node at
// the end of its nodes list, indented like the entries before it. Comments
// and everything else stay as they are. id 0 leaves the id to the position
// in the list. A nodes list in flow style ([...]) cannot be edited this
// way: the error says so, and Marshal can write the whole file instead.
func AddNode(data []byte, path, name, dsn string, id int) ([]byte, error) {
	before, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	if _, ok := before.NodeByName(name); ok {
		return nil, fmt.Errorf("node %s is in %s already", name, path)
	}
	lines := splitLines(data)
	last := before.Nodes[len(before.Nodes)-1]
	start, end, indent, ok := entryLines(lines, last.Line)
	if !ok {
		return nil, fmt.Errorf("%s: the nodes list is not a block list of `- name: …` entries: cannot add %s to it without rewriting the file", path, name)
	}
	fieldIndent := indent + 2
	if f := strings.Index(lines[start], "name:"); f > indent {
		fieldIndent = f
	}
	entry := fmt.Sprintf("%s- name: %s\n%sdsn: %s\n", strings.Repeat(" ", indent), q(name), strings.Repeat(" ", fieldIndent), q(dsn))
	if id != 0 {
		entry += fmt.Sprintf("%sid: %d\n", strings.Repeat(" ", fieldIndent), id)
	}
	out := joinLines(slices.Insert(lines, lastContent(lines, start, end)+1, entry))
	return out, verifyEdit(out, path, before, func(n []Node) []Node {
		return append(slices.Clone(n), Node{Name: name, DSN: dsn, ID: pick(id, len(n)+1)})
	})
}

// RemoveNode returns data without the entry of node name. A node after it
// whose id came from its position is given that id explicitly, so that no
// node's id (its snowflake node id, step class or range block) changes.
func RemoveNode(data []byte, path, name string) ([]byte, error) {
	before, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	idx := slices.IndexFunc(before.Nodes, func(n Node) bool { return n.Name == name })
	if idx < 0 {
		return nil, fmt.Errorf("node %s is not in %s", name, path)
	}
	lines := splitLines(data)
	// Pin the ids of the later entries first, from the last one, so that
	// line numbers above stay valid.
	for i := len(before.Nodes) - 1; i > idx; i-- {
		n := before.Nodes[i]
		if n.ID != i+1 {
			continue // explicit, or already not positional
		}
		start, end, indent, ok := entryLines(lines, n.Line)
		if !ok {
			return nil, fmt.Errorf("%s: the nodes list is not a block list of `- name: …` entries: cannot remove %s from it without rewriting the file", path, name)
		}
		fieldIndent := indent + 2
		if f := strings.Index(lines[start], "name:"); f > indent {
			fieldIndent = f
		}
		lines = slices.Insert(lines, lastContent(lines, start, end)+1, fmt.Sprintf("%sid: %d\n", strings.Repeat(" ", fieldIndent), n.ID))
	}
	start, end, _, ok := entryLines(lines, before.Nodes[idx].Line)
	if !ok {
		return nil, fmt.Errorf("%s: the nodes list is not a block list of `- name: …` entries: cannot remove %s from it without rewriting the file", path, name)
	}
	lines = slices.Delete(lines, start, lastContent(lines, start, end)+1)
	out := joinLines(lines)
	return out, verifyEdit(out, path, before, func(n []Node) []Node {
		return slices.Delete(slices.Clone(n), idx, idx+1)
	})
}

func pick(id, positional int) int {
	if id != 0 {
		return id
	}
	return positional
}

// verifyEdit parses the edited file and checks that it says what was meant:
// the same config with the node list changed by want.
func verifyEdit(out []byte, path string, before *Config, want func([]Node) []Node) error {
	after, err := Parse(out, path)
	if err != nil {
		return fmt.Errorf("editing %s went wrong (the file is unchanged): %w", path, err)
	}
	strip := func(ns []Node) []Node {
		out := make([]Node, len(ns))
		for i, n := range ns {
			out[i] = Node{Name: n.Name, DSN: n.DSN, ID: n.ID}
		}
		return out
	}
	if !slices.Equal(strip(after.Nodes), strip(want(before.Nodes))) {
		return fmt.Errorf("editing %s went wrong (the file is unchanged): nodes would be %v", path, strip(after.Nodes))
	}
	b := *before
	b.Nodes, b.Path = nil, ""
	a := *after
	a.Nodes, a.Path = nil, ""
	if !bytes.Equal(b.Marshal(), a.Marshal()) {
		return fmt.Errorf("editing %s went wrong (the file is unchanged): more than the nodes would change", path)
	}
	return nil
}

// entryLines finds the list entry that holds line (1-based) of a block
// sequence: its first line index (the one with "- "), the index after its
// last line, and the column of its dash.
func entryLines(lines []string, line int) (start, end, indent int, ok bool) {
	i := line - 1
	if i < 0 || i >= len(lines) {
		return 0, 0, 0, false
	}
	for ; i >= 0; i-- {
		t := strings.TrimLeft(lines[i], " ")
		if strings.HasPrefix(t, "- ") || t == "-\n" {
			break
		}
	}
	if i < 0 {
		return 0, 0, 0, false
	}
	start, indent = i, len(lines[i])-len(strings.TrimLeft(lines[i], " "))
	end = start + 1
	for ; end < len(lines); end++ {
		t := strings.TrimSpace(lines[end])
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if len(lines[end])-len(strings.TrimLeft(lines[end], " ")) <= indent {
			break
		}
	}
	return start, end, indent, true
}

// lastContent is the index of the last line of lines[start:end] that is
// neither blank nor a comment (comments after an entry belong to what
// follows).
func lastContent(lines []string, start, end int) int {
	last := start
	for i := start; i < end; i++ {
		t := strings.TrimSpace(lines[i])
		if t != "" && !strings.HasPrefix(t, "#") {
			last = i
		}
	}
	return last
}

func splitLines(data []byte) []string {
	s := string(data)
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return strings.SplitAfter(s, "\n")
}

func joinLines(lines []string) []byte { return []byte(strings.Join(lines, "")) }
