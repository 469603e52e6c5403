"""The schema, as an append-only list of migrations: index i brings the file to user_version i+1.

Never edit a released migration; add a new one (tests open files made by the previous schema).
"""

MIGRATIONS: list[str] = [
    # 1: members, sessions, conversations, messages
    """
    CREATE TABLE members (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT,
        role TEXT NOT NULL CHECK (role IN ('admin', 'member')),
        created_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        member_id INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX sessions_member ON sessions(member_id);
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        member_id INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
        title TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX conversations_member ON conversations(member_id, updated_at);
    CREATE TABLE messages (
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
        content TEXT NOT NULL,
        stats TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        PRIMARY KEY (conversation_id, position)
    )
    """,
    # 2: household policy (allowed models, a locked preset), remembered preferences, the built-in
    # owner of a single-user install, and household-wide settings
    """
    ALTER TABLE members ADD COLUMN allowed_models TEXT;
    ALTER TABLE members ADD COLUMN locked_preset TEXT;
    ALTER TABLE members ADD COLUMN preferences TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE members ADD COLUMN builtin INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE household_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    # 3: API keys (only a hash is stored; `prefix` finds the row, the hash is compared in constant time)
    """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        member_id INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL
    );
    CREATE INDEX api_keys_member ON api_keys(member_id)
    """,
    # 4: known devices: the browsers a member signed in from (a hash of the device cookie), so the
    # sign-in limiter counts them apart from other browsers at the same address
    """
    CREATE TABLE known_devices (
        token_hash TEXT NOT NULL,
        member_id INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
        last_used_at REAL NOT NULL,
        PRIMARY KEY (token_hash, member_id)
    );
    CREATE INDEX known_devices_member ON known_devices(member_id, last_used_at)
    """,
    # 5: document libraries: private (owner_id) or household (owner_id NULL, shared with the members
    # in library_access, or everyone); files, their chunks with embedding vectors, and an FTS5 index.
    # Library and chunk ids are never reused (AUTOINCREMENT): an old id (a source link, a cached vector
    # matrix) can never name another member's library or passage
    """
    CREATE TABLE libraries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        owner_id INTEGER REFERENCES members(id) ON DELETE CASCADE,
        folder TEXT NOT NULL DEFAULT '',
        everyone INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX libraries_owner ON libraries(owner_id);
    CREATE TABLE library_access (
        library_id INTEGER NOT NULL REFERENCES libraries(id) ON DELETE CASCADE,
        member_id INTEGER NOT NULL REFERENCES members(id) ON DELETE CASCADE,
        PRIMARY KEY (library_id, member_id)
    );
    CREATE TABLE library_quotas (
        member_id INTEGER PRIMARY KEY REFERENCES members(id) ON DELETE CASCADE,
        limit_bytes INTEGER
    );
    CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        library_id INTEGER NOT NULL REFERENCES libraries(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        mtime REAL NOT NULL DEFAULT 0,
        in_place INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('queued', 'indexing', 'ready', 'failed')),
        error TEXT NOT NULL DEFAULT '',
        added_at REAL NOT NULL
    );
    CREATE INDEX documents_library ON documents(library_id, status);
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        library_id INTEGER NOT NULL,
        ordinal INTEGER NOT NULL,
        heading TEXT NOT NULL DEFAULT '',
        page INTEGER,
        text TEXT NOT NULL,
        vector BLOB
    );
    CREATE INDEX chunks_document ON chunks(document_id);
    CREATE INDEX chunks_library ON chunks(library_id);
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        text, heading, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
    END;
    CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading);
    END
    """,
    # 6: which libraries a chat answers from (JSON list of ids, or "all"), and each reply's sources
    # (JSON list of {chunk_id, document, where})
    """
    ALTER TABLE conversations ADD COLUMN libraries TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN sources TEXT NOT NULL DEFAULT ''
    """,
]
