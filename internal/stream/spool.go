package stream

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// spooler keeps the chunks of transactions that the upstream streams before
// they commit (protocol 2), one file per top-level xid, so that memory stays
// flat however big the transaction. A file holds the raw in-stream messages
// as records: uint32 length, then the message.
type spooler struct {
	dir, prefix string
	files       map[uint32]*spoolFile
	dropped     map[uint32]bool // applied under a replication origin (loop prevention)
}

type spoolFile struct {
	f    *os.File
	w    *bufio.Writer
	size int64
	// subStart is where each subtransaction's first change is: aborting a
	// subtransaction truncates the file there, as PostgreSQL's own apply
	// worker does (a subtransaction's changes are contiguous up to its
	// abort, followed only by those of its children).
	subStart map[uint32]int64
}

func newSpooler(dir, slot string) (*spooler, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create spool directory: %w", err)
	}
	s := &spooler{dir: dir, prefix: slot + "-", files: map[uint32]*spoolFile{}, dropped: map[uint32]bool{}}
	// Chunks left by an earlier connection are useless: the upstream
	// streams an unfinished transaction again from its first segment.
	old, err := filepath.Glob(filepath.Join(dir, s.prefix+"*.spool"))
	if err != nil {
		return nil, fmt.Errorf("list spool directory: %w", err)
	}
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return nil, fmt.Errorf("remove stale spool file: %w", err)
		}
	}
	return s, nil
}

func (s *spooler) path(xid uint32) string {
	return filepath.Join(s.dir, s.prefix+strconv.FormatUint(uint64(xid), 10)+".spool")
}

// start begins a stream segment of xid.
func (s *spooler) start(xid uint32, first bool) error {
	_, open := s.files[xid]
	switch {
	case first && open:
		return fmt.Errorf("first stream segment of xid %d, which is already open", xid)
	case !first && !open:
		return fmt.Errorf("stream segment of unknown xid %d", xid)
	case !first:
		return nil
	}
	f, err := os.OpenFile(s.path(xid), os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("create spool file: %w", err)
	}
	s.files[xid] = &spoolFile{f: f, w: bufio.NewWriterSize(f, 64<<10), subStart: map[uint32]int64{}}
	return nil
}

// drop marks xid as not to be applied. Its RELATION messages are still
// kept: once the transaction commits, the upstream counts them as sent.
func (s *spooler) drop(xid uint32) { s.dropped[xid] = true }

// isDropped reports whether drop was called for xid.
func (s *spooler) isDropped(xid uint32) bool { return s.dropped[xid] }

// append spools one in-stream message of top-level transaction xid, sent by
// (sub)transaction subXID.
func (s *spooler) append(xid, subXID uint32, data []byte) error {
	if s.dropped[xid] && data[0] != 'R' {
		return nil
	}
	sf, ok := s.files[xid]
	if !ok {
		return fmt.Errorf("stream data for xid %d outside its segments", xid)
	}
	if _, ok := sf.subStart[subXID]; !ok {
		sf.subStart[subXID] = sf.size
	}
	return sf.write(data)
}

func (sf *spoolFile) write(data []byte) error {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(data)))
	if _, err := sf.w.Write(hdr[:]); err != nil {
		return fmt.Errorf("write spool file: %w", err)
	}
	if _, err := sf.w.Write(data); err != nil {
		return fmt.Errorf("write spool file: %w", err)
	}
	sf.size += int64(4 + len(data))
	return nil
}

// abort discards a whole transaction (subXID == xid) or one subtransaction.
func (s *spooler) abort(xid, subXID uint32) error {
	if xid == subXID {
		return s.finish(xid)
	}
	sf, ok := s.files[xid]
	if !ok {
		return nil // nothing of it was streamed
	}
	at, ok := sf.subStart[subXID]
	if !ok {
		return nil // the subtransaction had no changes
	}
	// RELATION messages in the discarded part stay: the upstream will not
	// send them again in this transaction.
	var rels [][]byte
	if err := sf.read(at, func(data []byte) error {
		if data[0] == 'R' {
			rels = append(rels, data)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := sf.f.Truncate(at); err != nil {
		return fmt.Errorf("truncate spool file: %w", err)
	}
	if _, err := sf.f.Seek(at, io.SeekStart); err != nil {
		return fmt.Errorf("seek spool file: %w", err)
	}
	sf.size = at
	for sub, start := range sf.subStart {
		if start >= at {
			delete(sf.subStart, sub)
		}
	}
	for _, r := range rels {
		if err := sf.write(r); err != nil {
			return err
		}
	}
	return nil
}

// replay calls fn for each spooled message of xid, in order.
func (s *spooler) replay(xid uint32, fn func(data []byte) error) error {
	sf, ok := s.files[xid]
	if !ok {
		return fmt.Errorf("commit of streamed xid %d that was never started", xid)
	}
	return sf.read(0, fn)
}

// read calls fn for each record from offset from on, leaving the file
// positioned at its end for appends.
func (sf *spoolFile) read(from int64, fn func(data []byte) error) error {
	if err := sf.w.Flush(); err != nil {
		return fmt.Errorf("write spool file: %w", err)
	}
	if _, err := sf.f.Seek(from, io.SeekStart); err != nil {
		return fmt.Errorf("seek spool file: %w", err)
	}
	defer sf.f.Seek(sf.size, io.SeekStart)
	r := bufio.NewReaderSize(io.LimitReader(sf.f, sf.size-from), 64<<10)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("read spool file: %w", err)
		}
		data := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(r, data); err != nil {
			return fmt.Errorf("read spool file: %w", err)
		}
		if err := fn(data); err != nil {
			return err
		}
	}
}

// finish forgets xid and removes its file.
func (s *spooler) finish(xid uint32) error {
	delete(s.dropped, xid)
	return s.remove(xid)
}

func (s *spooler) remove(xid uint32) error {
	sf, ok := s.files[xid]
	if !ok {
		return nil
	}
	delete(s.files, xid)
	sf.f.Close()
	if err := os.Remove(sf.f.Name()); err != nil {
		return fmt.Errorf("remove spool file: %w", err)
	}
	return nil
}

// close removes every file of unfinished transactions.
func (s *spooler) close() {
	for xid := range s.files {
		_ = s.remove(xid) // best effort: newSpooler removes leftovers too
	}
}

// inStreamXID reads the xid that in-stream messages carry after their type.
func inStreamXID(data []byte) (uint32, bool) {
	switch data[0] {
	case 'R', 'Y', 'I', 'U', 'D', 'T', 'M':
		if len(data) >= 5 {
			return binary.BigEndian.Uint32(data[1:]), true
		}
	}
	return 0, false
}
