import java.sql.*;
import java.util.*;

/** pgjdbc against a live Quiver: DatabaseMetaData, PreparedStatement and fetchSize. */
public class JdbcClient {
    static void check(boolean condition, String what) {
        if (!condition) throw new AssertionError(what);
    }

    static List<String> column(ResultSet rows, String name) throws SQLException {
        List<String> values = new ArrayList<>();
        while (rows.next()) values.add(rows.getString(name));
        return values;
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/quiver";
        try (Connection conn = DriverManager.getConnection(url, "quiver", "")) {
            try (Statement st = conn.createStatement()) {
                st.execute("CREATE FEATURE GROUP transactions (cc_num BIGINT NOT NULL, amount DOUBLE PRECISION, "
                    + "category TEXT, ts TIMESTAMP NOT NULL, PRIMARY KEY (cc_num), EVENT TIME ts) "
                    + "WITH (online = true, description = 'card transactions')");
                st.execute("CREATE FEATURE VIEW spend AS SELECT cc_num, amount FROM transactions");
            }
            DatabaseMetaData meta = conn.getMetaData();
            check(meta.getDatabaseProductName().equals("PostgreSQL"), "product name");
            check(meta.getDatabaseMajorVersion() == 15, "major version");
            check(column(meta.getCatalogs(), "TABLE_CAT").equals(List.of("quiver")), "catalogs");
            List<String> schemas = column(meta.getSchemas(), "TABLE_SCHEM");
            check(schemas.containsAll(List.of("public", "online", "quiver")), "schemas " + schemas);

            List<String> tables = column(meta.getTables(null, "public", "%", new String[] {"TABLE"}), "TABLE_NAME");
            check(tables.equals(List.of("transactions", "transactions_1")), "tables " + tables);
            List<String> remarks = column(meta.getTables(null, "public", "transactions", null), "REMARKS");
            check(remarks.equals(List.of("card transactions")), "remarks " + remarks);
            List<String> views = column(meta.getTables(null, "public", "%", new String[] {"VIEW"}), "TABLE_NAME");
            check(views.equals(List.of("spend", "spend_1")), "views " + views);
            List<String> online = column(meta.getTables(null, "online", "%", new String[] {"TABLE"}), "TABLE_NAME");
            check(online.equals(List.of("transactions", "transactions_1")), "online tables " + online);

            try (ResultSet cols = meta.getColumns(null, "public", "transactions", "%")) {
                List<String> described = new ArrayList<>();
                while (cols.next()) {
                    described.add(cols.getString("COLUMN_NAME") + ":" + cols.getInt("DATA_TYPE") + ":"
                        + cols.getString("IS_NULLABLE") + ":" + cols.getInt("ORDINAL_POSITION"));
                }
                check(described.equals(List.of(
                    "cc_num:" + Types.BIGINT + ":NO:1", "amount:" + Types.DOUBLE + ":YES:2",
                    "category:" + Types.VARCHAR + ":YES:3", "ts:" + Types.TIMESTAMP + ":NO:4")),
                    "columns " + described);
            }
            try (ResultSet keys = meta.getPrimaryKeys(null, "public", "transactions")) {
                check(keys.next(), "a primary key");
                check(keys.getString("COLUMN_NAME").equals("cc_num"), "key column");
                check(keys.getInt("KEY_SEQ") == 1, "key sequence");
                check(keys.getString("PK_NAME").equals("transactions_pkey"), "key name");
                check(!keys.next(), "one key column");
            }
            try (ResultSet index = meta.getIndexInfo(null, "public", "transactions", false, false)) {
                check(index.next(), "an index");
                check(index.getString("INDEX_NAME").equals("transactions_pkey"), "index name");
                check(index.getString("COLUMN_NAME").equals("cc_num"), "index column");
                check(!index.getBoolean("NON_UNIQUE"), "a unique index");
                check(!index.next(), "one index column");
            }
            Set<String> types = new HashSet<>(column(meta.getTypeInfo(), "TYPE_NAME"));
            check(types.containsAll(List.of("int8", "float8", "text", "timestamp", "bool")), "type info");

            try (PreparedStatement insert = conn.prepareStatement("INSERT INTO transactions VALUES (?, ?, ?, ?)")) {
                for (int i = 1; i <= 250; i++) {
                    insert.setLong(1, i);
                    insert.setDouble(2, i * 1.5);
                    insert.setString(3, i % 2 == 0 ? "food" : "travel");
                    insert.setTimestamp(4, Timestamp.valueOf("2024-01-01 10:00:00"));
                    insert.addBatch();
                }
                int total = Arrays.stream(insert.executeBatch()).sum();
                check(total == 250, "batch inserted " + total);
            }
            try (PreparedStatement lookup = conn.prepareStatement(
                    "SELECT amount, category FROM online.transactions WHERE cc_num = ?")) {
                for (long key : new long[] {2, 3, 7}) {
                    lookup.setLong(1, key);
                    try (ResultSet row = lookup.executeQuery()) {
                        check(row.next(), "row for " + key);
                        check(row.getDouble(1) == key * 1.5, "amount for " + key);
                        check(row.getString(2).equals(key % 2 == 0 ? "food" : "travel"), "category");
                    }
                }
            }
            // A fetch size inside a transaction reads the rows in batches of that many
            // (Execute with a row limit, PortalSuspended, Execute again).
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(16);
                try (ResultSet rows = st.executeQuery("SELECT cc_num FROM transactions ORDER BY cc_num")) {
                    long expected = 1;
                    while (rows.next()) {
                        check(rows.getLong(1) == expected, "row " + expected);
                        expected++;
                    }
                    check(expected == 251, "all rows fetched: " + (expected - 1));
                }
            }
            conn.commit();
            // Writes inside a transaction wait for commit: rollback discards them.
            try (Statement st = conn.createStatement()) {
                st.execute("CREATE TABLE jdbc_tx (id BIGINT)");
            }
            conn.commit();
            for (boolean commit : new boolean[] {false, true}) {
                try (PreparedStatement insert = conn.prepareStatement("INSERT INTO jdbc_tx VALUES (?)")) {
                    for (long id = 1; id <= 3; id++) {
                        insert.setLong(1, id);
                        insert.addBatch();
                    }
                    insert.executeBatch();
                }
                if (commit) {
                    conn.commit();
                } else {
                    conn.rollback();
                }
                try (Statement st = conn.createStatement();
                     ResultSet count = st.executeQuery("SELECT count(*) FROM jdbc_tx")) {
                    check(count.next(), "count row");
                    check(count.getLong(1) == (commit ? 3 : 0), "rows after " + (commit ? "commit" : "rollback"));
                }
                conn.commit();
            }
            conn.setAutoCommit(true);
        }
        System.out.println("ok");
    }
}
