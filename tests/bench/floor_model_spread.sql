\set a random(1, :accounts)
\set d random(1, :accounts - 1)
SELECT floor_model_transfer((SELECT id FROM bench_acc WHERE n = :a),
                            (SELECT id FROM bench_acc WHERE n = 1 + (:a + :d - 1) % :accounts), 1);
